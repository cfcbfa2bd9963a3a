import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { certificateNames, explainServerCertificate } from "../../lib/agent/diagnose.ts";
import { foreignCerts, scratchCerts } from "../harness.ts";

const server = () => new X509Certificate(readFileSync(scratchCerts().serverCert));
const ca = () => readFileSync(scratchCerts().ca);

test("a good server certificate has nothing to explain", () => {
  assert.equal(explainServerCertificate(server(), { serverName: "quic-tunnel-server", ca: ca() }), undefined);
  assert.equal(explainServerCertificate(server(), { serverName: "127.0.0.1", ca: ca() }), undefined);
});

test("a missing name is named, with the names the certificate carries", () => {
  const explanation = explainServerCertificate(server(), { serverName: "tunnel.example.com", ca: ca() });
  assert.match(
    String(explanation),
    /does not carry --server-name tunnel\.example\.com; it carries CN=quic-tunnel-server, DNS:quic-tunnel-server/,
  );
  assert.deepEqual(certificateNames(server()).slice(0, 2), ["CN=quic-tunnel-server", "DNS:quic-tunnel-server"]);
});

test("an issuer that --ca-file does not hold is named", () => {
  const explanation = explainServerCertificate(server(), { serverName: "quic-tunnel-server", ca: readFileSync(foreignCerts().ca) });
  assert.match(String(explanation), /issued by CN=quic-tunnel-dev-ca, not by a CA of --ca-file \(CN=some-other-ca\)/);
});

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { getLogger } from "@logtape/logtape";
import { loadTls, validityProblem, watchCertificates } from "../../lib/ops/certificates.ts";
import { Registry } from "../../lib/ops/metrics.ts";
import { foreignCerts, scratchCerts } from "../harness.ts";

const files = (dir: string) => ({
  ca: { flag: "ca-file", path: join(dir, "ca.crt") },
  cert: { flag: "cert-file", path: join(dir, "client.crt") },
  key: { flag: "cert-key", path: join(dir, "client.key") },
});

function copyCerts(): string {
  const certs = scratchCerts();
  const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-tls-"));
  for (const name of ["ca.crt", "client.crt", "client.key"]) copyFileSync(join(certs.ca, "..", name), join(dir, name));
  return dir;
}

test("loads PEM files and names the flag of a bad one", () => {
  const dir = copyCerts();
  assert.ok(loadTls(files(dir)).key.length > 100);
  writeFileSync(join(dir, "client.key"), "nope");
  assert.throws(() => loadTls(files(dir)), /--cert-key: .*client\.key holds no PEM private key/);
  assert.throws(
    () => loadTls({ ...files(copyCerts()), ca: { flag: "ca-file", path: join(dir, "absent") } }),
    /--ca-file: cannot read .*absent: ENOENT/,
  );
});

test("a key that is not the certificate's is an error naming both flags", () => {
  const dir = copyCerts();
  copyFileSync(foreignCerts().clientKey, join(dir, "client.key"));
  assert.throws(
    () => loadTls(files(dir)),
    /--cert-key .*client\.key is not the private key of the certificate in --cert-file .*client\.crt/,
  );
});

test("validity: not yet valid is said as such, expired as expired, and the last 30 days are warned about", () => {
  const certificate = new X509Certificate(readFileSync(scratchCerts().clientCert));
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  assert.match(String(validityProblem(certificate, from - 1000)), /^is not valid yet: valid from /);
  assert.match(String(validityProblem(certificate, to + 1000)), /^expired on /);
  assert.match(String(validityProblem(certificate, to - 10 * 24 * 3600 * 1000)), /^expires in 10 days, on /);
  assert.equal(validityProblem(certificate, from + 1000), undefined);
});

test("watched certificates: expiry as a metric, a rotation applied, a broken one refused and the old kept", {
  timeout: 30_000,
}, async () => {
  const dir = copyCerts();
  const registry = new Registry();
  const seen: string[] = [];
  const log = getLogger(["quic-tunnel", "test"]);
  const stop = watchCertificates(files(dir), { log, registry, onChange: () => seen.push("change") });
  const expiry = Date.parse(new X509Certificate(readFileSync(join(dir, "client.crt"))).validTo) / 1000;
  assert.ok(
    registry
      .render()
      .includes(`quic_tunnel_certificate_expiry_timestamp_seconds{file="${join(dir, "client.crt")}",flag="cert-file"} ${expiry}\n`),
  );
  const settle = () => new Promise((resolve) => setTimeout(resolve, 2_000));
  await settle(); // rotations come long after start-up; the first poll takes the baseline
  writeFileSync(join(dir, "client.crt"), `\n${readFileSync(join(dir, "client.crt"), "utf8")}`);
  await settle();
  copyFileSync(foreignCerts().clientKey, join(dir, "client.key"));
  await settle();
  stop();
  assert.deepEqual(seen, ["change"], "the mismatched key was not applied");
});

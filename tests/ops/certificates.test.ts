import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { loadTls, watchTls } from "../../lib/ops/certificates.ts";
import { testCerts } from "../harness.ts";

const files = (dir: string) => ({
  ca: { flag: "ca-file", path: join(dir, "ca.crt") },
  cert: { flag: "cert-file", path: join(dir, "client.crt") },
  key: { flag: "cert-key", path: join(dir, "client.key") },
});

function copyCerts(): string {
  const certs = testCerts();
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
    () => loadTls({ ...files(dir), ca: { flag: "ca-file", path: join(dir, "absent") } }),
    /--ca-file: cannot read .*absent: ENOENT/,
  );
});

test("watchTls reports a changed set once, and a broken one as an error", async () => {
  const dir = copyCerts();
  const seen: string[] = [];
  const stop = watchTls(files(dir), {
    onChange: () => seen.push("change"),
    onError: (err) => seen.push(`error: ${err.message}`),
  });
  const settle = () => new Promise((resolve) => setTimeout(resolve, 2_000));
  await settle(); // rotations come long after start-up; the first poll takes the baseline
  writeFileSync(join(dir, "client.crt"), `\n${readFileSync(join(dir, "client.crt"), "utf8")}`);
  await settle();
  writeFileSync(join(dir, "client.crt"), "garbage");
  await settle();
  stop();
  assert.equal(seen[0], "change");
  assert.match(seen.at(-1) ?? "", /^error: --cert-file: .*client\.crt holds no PEM certificate$/);
});

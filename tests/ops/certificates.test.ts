import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, type Stats, unwatchFile, utimesSync, watchFile, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { getLogger } from "@logtape/logtape";
import { loadTls, validityProblem, watchCertificates } from "../../lib/ops/certificates.ts";
import type { Logger } from "../../lib/ops/log.ts";
import { Registry } from "../../lib/ops/metrics.ts";
import { foreignCerts, scratchCerts } from "../harness.ts";
import { until } from "../wait.ts";

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

/**
 * Starts polling `path` once a second with fs.watchFile, and resolves, with a function that stops,
 * once the poller surely has its baseline. A poller takes it at some turn after it starts (on Bun a
 * change made before that is missed), so the file is touched, to 1970 + 1 s, + 2 s ..., until a poll
 * reports the last touch: from then on every change is seen, and none is left over.
 */
async function startPoller(path: string): Promise<() => void> {
  let reported: number | undefined;
  const onPoll = (current: Stats) => {
    reported = current.mtimeMs;
  };
  watchFile(path, { interval: 1000 }, onPoll);
  let touched = 0;
  await until(
    () => {
      if (reported === touched * 1000) return true;
      if (reported === undefined) utimesSync(path, ++touched, touched);
      return false;
    },
    `a poll of ${path} to report a change`,
    { timeoutMs: 10_000, intervalMs: 100 },
  );
  return () => unwatchFile(path, onPoll);
}

test("watched certificates: expiry as a metric, a rotation applied, a broken one refused and the old kept", {
  timeout: 30_000,
}, async () => {
  const dir = copyCerts();
  const registry = new Registry();
  const seen: string[] = [];
  // What the watcher logs about a reload, as it happens.
  const logged: string[] = [];
  const base = getLogger(["quic-tunnel", "test"]);
  const log: Logger = Object.assign(Object.create(base), {
    info: (message: string) => logged.push(`info: ${message}`),
    error: (message: string) => logged.push(`error: ${message}`),
  });
  // fs.watchFile polls a path with one poller, whichever caller asked first (Node, Bun, Deno): the
  // test starts them, at the watcher's own interval, so it sees the polls the watcher will see.
  const pollers = await Promise.all(Object.values(files(dir)).map(({ path }) => startPoller(path)));
  const watch = watchCertificates(files(dir), { log, registry, onChange: () => seen.push("change") });
  const expiry = Date.parse(new X509Certificate(readFileSync(join(dir, "client.crt"))).validTo) / 1000;
  assert.ok(
    registry
      .render()
      .includes(`quic_tunnel_certificate_expiry_timestamp_seconds{file="${join(dir, "client.crt")}",flag="cert-file"} ${expiry}\n`),
  );
  /** Resolves once the watcher has logged its verdict on the change just made. */
  const reloaded = (count: number) =>
    until(
      () => logged.length >= count,
      () => `the watcher to log reload ${count} (logged: ${JSON.stringify(logged)})`,
      { timeoutMs: 10_000 },
    );
  try {
    writeFileSync(join(dir, "client.crt"), `\n${readFileSync(join(dir, "client.crt"), "utf8")}`);
    await reloaded(1);
    assert.match(logged[0], /^info: certificate files changed/);
    copyFileSync(foreignCerts().clientKey, join(dir, "client.key"));
    await reloaded(2);
    assert.match(logged[1], /^error: certificate reload failed, keeping the previous certificates/);
  } finally {
    watch.stop();
    for (const unwatch of pollers) unwatch();
  }
  assert.deepEqual(seen, ["change"], "the mismatched key was not applied");
});

test("reload (SIGHUP) applies the files at once, before any poll could, and refuses a broken set naming its cause", () => {
  const dir = copyCerts();
  const registry = new Registry();
  const logged: string[] = [];
  const base = getLogger(["quic-tunnel", "test"]);
  const log: Logger = Object.assign(Object.create(base), {
    info: (message: string, properties: Record<string, unknown>) => logged.push(`info: ${message} ${JSON.stringify(properties)}`),
    error: (message: string, properties: Record<string, unknown>) => logged.push(`error: ${message} ${JSON.stringify(properties)}`),
  });
  const seen: Buffer[] = [];
  const watch = watchCertificates(files(dir), { log, registry, onChange: (pems) => seen.push(pems.cert) });
  try {
    const rotated = foreignCerts();
    copyFileSync(rotated.clientCert, join(dir, "client.crt"));
    copyFileSync(rotated.clientKey, join(dir, "client.key"));
    // Synchronous: no poll (a timer) can have run in between.
    watch.reload("SIGHUP");
    assert.deepEqual(seen, [readFileSync(rotated.clientCert)], "the new certificate was handed on at once");
    assert.match(
      logged[0],
      /^info: certificate files reloaded on \{cause\} \(\{flags\}\)[^{]*\{"cause":"SIGHUP","flags":"--cert-file, --cert-key, --ca-file"\}/,
    );
    copyFileSync(scratchCerts().clientKey, join(dir, "client.key"));
    watch.reload("SIGHUP");
    assert.equal(seen.length, 1, "a key that is not the certificate's is not applied");
    assert.match(logged[1], /^error: certificate reload failed, keeping the previous certificates: .*"cause":"SIGHUP"/);
  } finally {
    watch.stop();
  }
});

/**
 * The standalone executables of `npm run build`, copied into an otherwise empty root filesystem
 * holding only what the scratch image holds (scripts/rootfs.ts), run there with chroot as root, with
 * a real transfer through them. Without dist/ the test is skipped locally and fails in CI.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import pkg from "../package.json" with { type: "json" };
import { makeRootfs } from "../scripts/rootfs.ts";
import { trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  CERTS_AT_ROOT,
  expectedSha256,
  ROOT,
  run,
  SLOW_TRANSPORT,
  serverTlsArgs,
  sha256,
  spawnProcess,
  startHttpTarget,
  testCerts,
} from "./harness.ts";

const BINARIES = ["quic-server", "quic-agent", "quic-agent-tcp"];
const missing = BINARIES.filter((name) => !existsSync(join(ROOT, "dist", name)));
const track = trackProcesses();
let unmount = () => {};
after(async () => {
  unmount();
});

function skipReason(): string | undefined {
  if (missing.length === 0) {
    return process.getuid?.() === 0 ? undefined : "chroot needs root";
  }
  if (process.env.CI) assert.fail(`dist/${missing[0]} is missing: CI must run npm run build first`);
  return `no dist/ binaries (npm run build makes them)`;
}

test("each binary prints package.json's version", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = skipReason();
  if (reason) return void t.skip(reason);
  for (const name of BINARIES) {
    const result = await run(join(ROOT, "dist", name), ["--version"]);
    assert.equal(result.stdout.toString(), `${name} ${pkg.version}\n`);
  }
});

test("server and agent binaries run alone in a minimal root filesystem and carry a transfer", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = skipReason();
  if (reason) return void t.skip(reason);
  const root = mkdtempSync(join(tmpdir(), "quic-tunnel-rootfs-"));
  makeRootfs(
    root,
    BINARIES.map((name) => join(ROOT, "dist", name)),
  );
  for (const name of BINARIES) copyFileSync(join(ROOT, "dist", name), join(root, name));
  const certs = testCerts();
  mkdirSync(join(root, "certs"));
  for (const file of ["ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"])
    copyFileSync(join(certs.ca, "..", file), join(root, "certs", file));
  execFileSync("mount", ["-t", "proc", "proc", join(root, "proc")]);
  unmount = () => execFileSync("umount", ["-l", join(root, "proc")]);
  const expected = new Set(["certs", "etc", "lib", "lib64", "proc", "tmp", "usr", ...BINARIES]);
  for (const entry of readdirSync(root)) assert.ok(expected.has(entry), `nothing else in the root filesystem: ${entry}`);

  const target = await startHttpTarget();
  const server = spawnProcess("chroot", [
    root,
    "/quic-server",
    "--listen-tcp",
    "127.0.0.1:0",
    "--listen-quic",
    "127.0.0.1:0",
    ...serverTlsArgs(CERTS_AT_ROOT),
  ]);
  track(server);
  const [, tcpPort, quicPort] = await server.waitFor(/tcp=127\.0\.0\.1:(\d+) quic=127\.0\.0\.1:(\d+)/);
  const agent = spawnProcess("chroot", [root, "/quic-agent", ...agentArgs(`localhost:${quicPort}`, CERTS_AT_ROOT)]);
  track(agent);
  await agent.waitFor(/connected to server/);
  const result = await run("curl", [
    "-sS",
    "--max-time",
    "30",
    "-p",
    "--proxy",
    `127.0.0.1:${tcpPort}`,
    `http://127.0.0.1:${target.port}/mib/16`,
  ]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(sha256(result.stdout), expectedSha256(16));

  const passthrough = spawnProcess("chroot", [
    root,
    "/quic-agent-tcp",
    ...agentArgs(`127.0.0.1:${quicPort}`, CERTS_AT_ROOT),
    "--upstream",
    `127.0.0.1:${target.port}`,
  ]);
  track(passthrough);
  await passthrough.waitFor(/connected to server/);
  await agent.stop();
  await server.waitFor(/disconnected/);
  const direct = await run("curl", ["-sS", "--max-time", "30", `http://127.0.0.1:${tcpPort}/mib/4`]);
  assert.equal(sha256(direct.stdout), expectedSha256(4));
  await target.close();
});

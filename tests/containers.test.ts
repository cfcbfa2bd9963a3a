/**
 * The Dockerfile's scratch images, built offline with podman from the compiled binaries
 * (`--build-context artifacts=.` stands in for the builder stage), run as containers with a real
 * transfer through them. Skipped where podman or dist/ is missing, except in CI, where it fails.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
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

const PODMAN = ["--runtime", "runc"];
const RUN = [...PODMAN, "run", "--rm", "--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
const IMAGES = { "quic-server-scratch": "quic-server", "quic-client-scratch": "quic-agent", "quic-client-tcp-scratch": "quic-agent-tcp" };
const tag = (target: string) => `localhost/quic-tunnel-test/${target}:${process.pid}`;
const names: string[] = [];
const track = trackProcesses();

after(async () => {
  for (const name of names) await run("podman", [...PODMAN, "rm", "-f", name]);
  for (const target of Object.keys(IMAGES)) await run("podman", [...PODMAN, "rmi", "-f", tag(target)]);
});

function unavailable(): string | undefined {
  let podman = true;
  try {
    execFileSync("podman", ["--version"], { stdio: "ignore" });
  } catch {
    podman = false;
  }
  const binaries = Object.values(IMAGES).every((name) => existsSync(join(ROOT, "dist", name)));
  const reason = !podman ? "podman is not installed" : !binaries ? "no dist/ binaries (npm run build)" : undefined;
  if (reason && process.env.CI) assert.fail(`${reason}: CI must provide it`);
  return reason;
}

test("scratch images of server and agent build offline and carry a transfer", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = unavailable();
  if (reason) return void t.skip(reason);
  makeRootfs(
    join(ROOT, "dist", "rootfs"),
    Object.values(IMAGES).map((name) => join(ROOT, "dist", name)),
  );
  for (const target of Object.keys(IMAGES)) {
    const build = await run(
      "podman",
      [...PODMAN, "build", "--build-context", `artifacts=${ROOT}`, "--target", target, "-t", tag(target), ROOT],
      { timeoutMs: 120_000 },
    );
    assert.equal(build.code, 0, build.stderr);
  }
  const inspect = await run("podman", [
    ...PODMAN,
    "image",
    "inspect",
    "--format",
    "{{.Size}} {{.Config.User}}",
    tag("quic-server-scratch"),
  ]);
  const [size, user] = inspect.stdout.toString().trim().split(" ");
  assert.ok(Number(size) < 130e6, `image size ${size}`);
  assert.equal(user, "65532:65532", "runs as non-root");

  // Certificates readable by the image's non-root user.
  const certs = testCerts();
  const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-podman-"));
  chmodSync(dir, 0o755);
  for (const file of ["ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"]) {
    copyFileSync(join(certs.ca, "..", file), join(dir, file));
    chmodSync(join(dir, file), 0o644);
  }
  const target = await startHttpTarget();
  const container = (image: string, name: string, args: string[]) => {
    names.push(name);
    const proc = spawnProcess("podman", [...RUN, "--name", name, "-v", `${dir}:/certs:ro`, tag(image), ...args]);
    track(proc);
    return proc;
  };
  const server = container("quic-server-scratch", `qt-server-${process.pid}`, [
    "--listen-tcp",
    "127.0.0.1:0",
    "--listen-quic",
    "127.0.0.1:0",
    ...serverTlsArgs(CERTS_AT_ROOT),
  ]);
  const [, tcpPort, quicPort] = await server.waitFor(/tcp=127\.0\.0\.1:(\d+) quic=127\.0\.0\.1:(\d+)/, 30_000);
  const agent = container("quic-client-scratch", `qt-agent-${process.pid}`, agentArgs(`localhost:${quicPort}`, CERTS_AT_ROOT));
  await agent.waitFor(/connected to server/, 30_000);
  const result = await run("curl", [
    "-sS",
    "--max-time",
    "30",
    "-p",
    "--proxy",
    `127.0.0.1:${tcpPort}`,
    `http://127.0.0.1:${target.port}/mib/16`,
  ]);
  await target.close();
  assert.equal(result.code, 0, result.stderr);
  assert.equal(sha256(result.stdout), expectedSha256(16));
});

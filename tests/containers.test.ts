/**
 * The Dockerfile's scratch images, built offline with podman from the compiled binaries
 * (`--build-context artifacts=.` stands in for the builder stage): on linux/amd64 run as containers
 * with a real transfer through them; on linux/arm64 built and checked to hold the arm64 executable
 * (running them would need binfmt, which this host does not have). Skipped with the reason where
 * podman or dist/ is missing, except in CI, where it fails.
 */
import assert from "node:assert/strict";
import { chmodSync, closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { makeRootfs } from "../scripts/rootfs.ts";
import { commandExists, skip, trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  CERTS_AT_ROOT,
  expectedSha256,
  ROOT,
  run,
  SLOW_TRANSPORT,
  scratchCerts,
  serverTlsArgs,
  sha256,
  spawnProcess,
  startHttpTarget,
} from "./harness.ts";

const PODMAN = ["--runtime", "runc"];
const RUN = [...PODMAN, "run", "--rm", "--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
const TARGETS = ["quic-server-scratch", "quic-client-scratch", "quic-client-tcp-scratch"];
/** Each Docker platform, with the folder of dist/ its image is built from. */
const PLATFORMS = { amd64: "linux-x64", arm64: "linux-arm64" } as const;
/** ELF e_machine of an aarch64 executable. */
const EM_AARCH64 = 183;
const tag = (target: string, arch: string) => `localhost/quic-tunnel-test/${target}:${arch}-${process.pid}`;

const track = trackProcesses();

/** The containers and images a test made. */
interface Made {
  containers: string[];
  images: string[];
}

/**
 * Runs `body`, then removes what it made, and only that: nothing when the test was skipped. Done
 * here rather than in an after() hook, which Deno skips in a file with an ignored test.
 */
async function withPodman(body: (made: Made) => Promise<void>): Promise<void> {
  const made: Made = { containers: [], images: [] };
  try {
    await body(made);
  } finally {
    for (const name of made.containers) await run("podman", [...PODMAN, "rm", "-f", name]);
    for (const image of made.images) await run("podman", [...PODMAN, "rmi", "-f", image]);
  }
}

/** Why the images of `arch` cannot be built here, if they cannot; in CI that fails instead. */
function unavailable(arch: keyof typeof PLATFORMS): string | undefined {
  const problems: string[] = [];
  if (!commandExists("podman")) problems.push("podman is not installed");
  if (!existsSync(join(ROOT, "dist", PLATFORMS[arch], "quic-tunnel")))
    problems.push(`no dist/${PLATFORMS[arch]}/quic-tunnel (npm run build)`);
  // scripts/rootfs.ts lists the arm64 libraries with Debian's arm64 loader under qemu.
  if (arch === "arm64" && !commandExists("qemu-aarch64-static"))
    problems.push("qemu-aarch64-static is not installed (Debian package qemu-user-static)");
  const reason = problems.length > 0 ? problems.join("; ") : undefined;
  if (reason && process.env.CI) assert.fail(`${reason}: CI must provide it`);
  return reason;
}

/** Lays out dist/<platform>/rootfs and builds the three scratch images of `arch`. */
async function buildImages(arch: keyof typeof PLATFORMS, made: Made): Promise<void> {
  const dir = join(ROOT, "dist", PLATFORMS[arch]);
  makeRootfs(PLATFORMS[arch], join(dir, "rootfs"), [join(dir, "quic-tunnel")]);
  for (const target of TARGETS) {
    made.images.push(tag(target, arch));
    const build = await run(
      "podman",
      [
        ...PODMAN,
        "build",
        // No cached layers: the stages' images would stay behind untagged.
        "--layers=false",
        "--platform",
        `linux/${arch}`,
        "--build-context",
        `artifacts=${ROOT}`,
        "--target",
        target,
        "-t",
        tag(target, arch),
        ROOT,
      ],
      { timeoutMs: 120_000 },
    );
    assert.equal(build.code, 0, build.stderr);
    const inspect = await run("podman", [
      ...PODMAN,
      "image",
      "inspect",
      "--format",
      "{{.Architecture}} {{.Size}} {{.Config.User}}",
      tag(target, arch),
    ]);
    const [architecture, size, user] = inspect.stdout.toString().trim().split(" ");
    assert.equal(architecture, arch, `${target} is for ${arch}`);
    assert.ok(Number(size) < 130e6, `${target} image size ${size}`);
    assert.equal(user, "65532:65532", `${target} runs as non-root`);
  }
}

test("linux/amd64 scratch images of server and agent build offline and carry a transfer", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = unavailable("amd64");
  if (reason) return skip(t, reason);
  await withPodman(async (made) => {
    await buildImages("amd64", made);

    // Certificates readable by the image's non-root user.
    const certs = scratchCerts();
    const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-podman-"));
    chmodSync(dir, 0o755);
    for (const file of ["ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"]) {
      copyFileSync(join(certs.ca, "..", file), join(dir, file));
      chmodSync(join(dir, file), 0o644);
    }
    const target = await startHttpTarget();
    const container = (image: string, name: string, args: string[]) => {
      made.containers.push(name);
      return track(spawnProcess("podman", [...RUN, "--name", name, "-v", `${dir}:/certs:ro`, tag(image, "amd64"), ...args]));
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
});

test("linux/arm64 scratch images build offline and hold the arm64 executable", async (t) => {
  const reason = unavailable("arm64");
  if (reason) return skip(t, reason);
  await withPodman(async (made) => {
    await buildImages("arm64", made);
    const name = `qt-arm64-${process.pid}`;
    made.containers.push(name);
    // Created, never started: only its file system is read.
    const create = await run("podman", [...PODMAN, "create", "--name", name, tag("quic-server-scratch", "arm64")]);
    assert.equal(create.code, 0, create.stderr);
    const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-podman-"));
    const cp = await run("podman", [...PODMAN, "cp", `${name}:/quic-tunnel`, join(dir, "quic-tunnel")]);
    assert.equal(cp.code, 0, cp.stderr);
    const header = Buffer.alloc(20);
    const fd = openSync(join(dir, "quic-tunnel"), "r");
    readSync(fd, header, 0, header.length, 0);
    closeSync(fd);
    rmSync(dir, { recursive: true });
    assert.equal(header.readUInt16LE(18), EM_AARCH64, "/quic-tunnel is an aarch64 ELF executable");
  });
});

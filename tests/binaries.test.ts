/**
 * The multi-call executables of `npm run build` (dist/<platform>/quic-tunnel and its role links):
 * each role by link and by role argument, then real transfers through them: on linux-x64 inside an
 * otherwise empty root filesystem holding only what the scratch image holds (scripts/rootfs.ts),
 * and on linux-arm64 under qemu-aarch64-static, both as a plain process and in its own minimal root
 * filesystem. Without dist/ (or qemu, or root for chroot) a test is skipped with the reason, except
 * in CI, where a missing build or tool fails.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { test } from "node:test";
import pkg from "../package.json" with { type: "json" };
import { makeRootfs } from "../scripts/rootfs.ts";
import { commandExists, skip, trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  CERTS_AT_ROOT,
  expectedSha256,
  ROOT,
  type RoleProcess,
  run,
  SLOW_TRANSPORT,
  scratchCerts,
  serverTlsArgs,
  sha256,
  spawnProcess,
  startHttpTarget,
} from "./harness.ts";

/** Each role: its argument to quic-tunnel and the link named after it. */
const ROLES = [
  { role: "server", link: "quic-server" },
  { role: "agent", link: "quic-agent" },
  { role: "agent-tcp", link: "quic-agent-tcp" },
];
const dist = (platform: string) => join(ROOT, "dist", platform);
const QEMU = "qemu-aarch64-static";
/** Debian's arm64 glibc (libc6-arm64-cross), which qemu loads the arm64 binary with. */
const AARCH64_LIBS = "/usr/aarch64-linux-gnu";
/** Under qemu the binary starts in 1-2 s and handshakes are slower: wait longer for log events. */
const QEMU_WAIT_MS = 60_000;

const track = trackProcesses();

/** Why a test cannot run here, if it cannot; in CI a missing build or tool fails instead. */
function missing(needs: { platform: string; qemu?: boolean; root?: boolean }): string | undefined {
  const problems: string[] = [];
  if (!existsSync(join(dist(needs.platform), "quic-tunnel"))) problems.push(`no dist/${needs.platform}/quic-tunnel (npm run build)`);
  if (needs.qemu && !commandExists(QEMU)) problems.push(`${QEMU} is not installed (Debian package qemu-user-static)`);
  if (needs.qemu && !existsSync(join(AARCH64_LIBS, "lib/ld-linux-aarch64.so.1"))) {
    problems.push(`no arm64 glibc in ${AARCH64_LIBS} (Debian packages libc6-arm64-cross, libgcc-s1-arm64-cross)`);
  }
  if (problems.length > 0 && process.env.CI) assert.fail(`${problems.join("; ")}: CI must provide it`);
  if (needs.root && process.getuid?.() !== 0) problems.push("chroot needs root");
  return problems.length > 0 ? problems.join("; ") : undefined;
}

test("quic-tunnel runs each role by its link and by role argument, with package.json's version", async (t) => {
  const reason = missing({ platform: "linux-x64" });
  if (reason) return skip(t, reason);
  const bin = dist("linux-x64");
  for (const { role, link } of ROLES) {
    const byLink = await run(join(bin, link), ["--version"]);
    assert.equal(byLink.stdout.toString(), `${link} ${pkg.version}\n`, `${link} --version`);
    const byArgument = await run(join(bin, "quic-tunnel"), [role, "--version"]);
    assert.equal(byArgument.stdout.toString(), `${link} ${pkg.version}\n`, `quic-tunnel ${role} --version`);
  }
  const version = await run(join(bin, "quic-tunnel"), ["--version"]);
  assert.equal(version.stdout.toString(), `quic-tunnel ${pkg.version}\n`);
  const help = await run(join(bin, "quic-tunnel"), ["--help"]);
  assert.equal(help.code, 0);
  for (const { role } of ROLES) assert.match(help.stdout.toString(), new RegExp(`^  ${role} `, "m"), `--help lists ${role}`);
  const unknown = await run(join(bin, "quic-tunnel"), ["client"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown role "client"/);
});

/** The commands that run quic-tunnel's roles, by link or by role argument. */
interface Launcher {
  server(args: string[]): RoleProcess;
  agent(args: string[]): RoleProcess;
  agentTcp(args: string[]): RoleProcess;
  /** How long to wait for a log event. */
  waitMs: number;
}

/**
 * Server (by its link), agent (by role argument) and passthrough agent (by its link) carry a 16 MiB
 * download through CONNECT; then, with the CONNECT agent gone, a 4 MiB one through the passthrough.
 */
async function carryTransfers(launch: Launcher, certs: typeof CERTS_AT_ROOT): Promise<void> {
  const target = await startHttpTarget();
  const server = track(launch.server(["--listen-tcp", "127.0.0.1:0", "--listen-quic", "127.0.0.1:0", ...serverTlsArgs(certs)]));
  const [, tcpPort, quicPort] = await server.waitFor(/server started, tcp=127\.0\.0\.1:(\d+) quic=127\.0\.0\.1:(\d+)/, launch.waitMs);
  const agent = track(launch.agent(agentArgs(`localhost:${quicPort}`, certs)));
  await agent.waitFor(/connected to server/, launch.waitMs);
  const result = await run(
    "curl",
    ["-sS", "--max-time", "120", "-p", "--proxy", `127.0.0.1:${tcpPort}`, `http://127.0.0.1:${target.port}/mib/16`],
    { timeoutMs: 150_000 },
  );
  assert.equal(result.code, 0, result.stderr);
  assert.equal(sha256(result.stdout), expectedSha256(16));

  const passthrough = track(launch.agentTcp([...agentArgs(`127.0.0.1:${quicPort}`, certs), "--upstream", `127.0.0.1:${target.port}`]));
  await passthrough.waitFor(/connected to server/, launch.waitMs);
  await agent.stop();
  await server.waitFor(/disconnected/, launch.waitMs);
  const direct = await run("curl", ["-sS", "--max-time", "120", `http://127.0.0.1:${tcpPort}/mib/4`], { timeoutMs: 150_000 });
  assert.equal(direct.code, 0, direct.stderr);
  assert.equal(sha256(direct.stdout), expectedSha256(4));
  // Killed now rather than after the file, so that the next test does not share the CPU with them.
  await Promise.all([server.stop("SIGKILL"), passthrough.stop("SIGKILL")]);
  await target.close();
}

/**
 * A root filesystem with only what the platform's scratch image holds, quic-tunnel and its links,
 * the test certificates in /certs, and `extra` host files at its top.
 */
function minimalRoot(platform: string, extra: string[] = []): string {
  const root = mkdtempSync(join(tmpdir(), `quic-tunnel-rootfs-${platform}-`));
  makeRootfs(platform, root, [join(dist(platform), "quic-tunnel")]);
  copyFileSync(join(dist(platform), "quic-tunnel"), join(root, "quic-tunnel"));
  for (const { link } of ROLES) symlinkSync("quic-tunnel", join(root, link));
  for (const file of extra) copyFileSync(file, join(root, basename(file)));
  const certs = scratchCerts();
  mkdirSync(join(root, "certs"));
  for (const file of ["ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"])
    copyFileSync(join(certs.ca, "..", file), join(root, "certs", file));
  const expected = new Set([
    "certs",
    "etc",
    "lib",
    "lib64",
    "proc",
    "tmp",
    "usr",
    "quic-tunnel",
    ...ROLES.map(({ link }) => link),
    ...extra.map((file) => basename(file)),
  ]);
  for (const entry of readdirSync(root)) assert.ok(expected.has(entry), `nothing else in the root filesystem: ${entry}`);
  return root;
}

/** Runs `body` in a {@link minimalRoot} with /proc mounted (the binaries abort without it), then removes it. */
async function inMinimalRoot(platform: string, extra: string[], body: (root: string) => Promise<void>): Promise<void> {
  const root = minimalRoot(platform, extra);
  execFileSync("mount", ["-t", "proc", "proc", join(root, "proc")]);
  try {
    await body(root);
  } finally {
    // Here, not in an after() hook: Deno skips those in a file with an ignored test.
    execFileSync("umount", ["-l", join(root, "proc")]);
    rmSync(root, { recursive: true, force: true });
  }
}

test("linux-x64: quic-tunnel runs alone in a minimal root filesystem and carries transfers", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = missing({ platform: "linux-x64", root: true });
  if (reason) return skip(t, reason);
  await inMinimalRoot("linux-x64", [], (root) =>
    carryTransfers(
      {
        server: (args) => spawnProcess("chroot", [root, "/quic-server", ...args]),
        agent: (args) => spawnProcess("chroot", [root, "/quic-tunnel", "agent", ...args]),
        agentTcp: (args) => spawnProcess("chroot", [root, "/quic-agent-tcp", ...args]),
        waitMs: 10_000,
      },
      CERTS_AT_ROOT,
    ),
  );
});

test("linux-arm64 under qemu: quiche is left out, auto falls back to node-quic and carries transfers", {
  skip: SLOW_TRANSPORT,
}, async (t) => {
  const reason = missing({ platform: "linux-arm64", qemu: true });
  if (reason) return skip(t, reason);
  const bin = dist("linux-arm64");
  const qemu = (command: string, args: string[]) => spawnProcess(QEMU, ["-L", AARCH64_LIBS, join(bin, command), ...args]);
  const certs = scratchCerts();

  const quiche = await run(
    QEMU,
    [
      "-L",
      AARCH64_LIBS,
      join(bin, "quic-server"),
      "--listen-tcp",
      "127.0.0.1:0",
      "--listen-quic",
      "127.0.0.1:0",
      ...serverTlsArgs(certs),
      "--quic-engine",
      "quiche",
    ],
    { timeoutMs: QEMU_WAIT_MS },
  );
  assert.equal(quiche.code, 1, quiche.stderr);
  assert.match(quiche.stderr, /the quiche engine is not in this build \(linux-arm64\): use --quic-engine node-quic/);

  await carryTransfers(
    {
      server: (args) => qemu("quic-server", args),
      agent: (args) => qemu("quic-tunnel", ["agent", ...args]),
      agentTcp: (args) => qemu("quic-agent-tcp", args),
      waitMs: QEMU_WAIT_MS,
    },
    certs,
  );
});

test("linux-arm64 under qemu: quic-tunnel runs alone in its minimal root filesystem", { skip: SLOW_TRANSPORT }, async (t) => {
  const reason = missing({ platform: "linux-arm64", qemu: true, root: true });
  if (reason) return skip(t, reason);
  // qemu-aarch64-static is static, so inside the chroot the arm64 binary sees only the arm64 root filesystem.
  const qemu = execFileSync("sh", ["-c", `command -v ${QEMU}`], { encoding: "utf8" }).trim();
  await inMinimalRoot("linux-arm64", [qemu], (root) =>
    carryTransfers(
      {
        server: (args) => spawnProcess("chroot", [root, `/${QEMU}`, "/quic-server", ...args]),
        agent: (args) => spawnProcess("chroot", [root, `/${QEMU}`, "/quic-tunnel", "agent", ...args]),
        agentTcp: (args) => spawnProcess("chroot", [root, `/${QEMU}`, "/quic-agent-tcp", ...args]),
        waitMs: QEMU_WAIT_MS,
      },
      CERTS_AT_ROOT,
    ),
  );
});

/**
 * Test harness: what tests share beyond scripts/roles.ts (role processes) and scripts/traffic.ts
 * (HTTP target, raw client), which it re-exports: the engines and runtimes to test, foreign
 * certificates, a lossy UDP relay, curl transfers both ways and Prometheus parsing.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { hasNodeQuic, type QuicEngineName } from "../lib/transport/mod.ts";
import { openDenoUdp } from "../lib/transport/quiche/datagram-deno.ts";
import { type DevCertPaths, ensureDevCerts } from "../scripts/dev-certs.ts";
import { currentRuntime, ROOT, type RoleProcess, type Runtime, run, runtimeCommand } from "../scripts/roles.ts";
import { expectedSha256, sha256 } from "../scripts/traffic.ts";

export * from "../scripts/roles.ts";
export * from "../scripts/traffic.ts";

/**
 * Why the tests that move real traffic are skipped on this runtime, if they are: on Deno without
 * its unstable UDP API or FFI, the quiche engine falls back to Deno's node:dgram, which moves
 * about 1 MiB/s here (lib/transport/quiche/datagram-deno.ts), too slow for those tests to finish in time.
 */
export const SLOW_TRANSPORT: string | undefined =
  "Deno" in globalThis && openDenoUdp() === undefined
    ? "Deno without Deno.listenDatagram and FFI is too slow here for tunnel tests (see lib/transport/quiche/datagram-deno.ts)"
    : undefined;

/**
 * The QUIC engines the roles can use on this runtime: both on Bun (which has node:quic), quiche
 * elsewhere. Tests that carry traffic run once per engine.
 */
export const ENGINES: QuicEngineName[] = (await hasNodeQuic()) ? ["node-quic", "quiche"] : ["quiche"];

/** Another CA and certificates that the tunnel's CA did not sign. */
export function foreignCerts(): DevCertPaths {
  return ensureDevCerts(mkdtempSync(join(tmpdir(), "quic-tunnel-foreign-")), { caName: "some-other-ca" });
}

/** The test certificates as a chroot or container sees them, mounted at /certs. */
export const CERTS_AT_ROOT = {
  ca: "/certs/ca.crt",
  serverCert: "/certs/tls.crt",
  serverKey: "/certs/tls.key",
  clientCert: "/certs/client.crt",
  clientKey: "/certs/client.key",
};

/**
 * True where a child that handled SIGTERM or SIGINT and then exited is reported as killed by that
 * signal, its exit code lost: Deno 2.9's node:child_process. Tests check such exit codes elsewhere.
 */
export const SIGNALLED_EXIT_CODE_HIDDEN: boolean = "Deno" in globalThis;

/**
 * The runtime of the lossy relay: the one running the tests, except on Deno, whose node:dgram
 * would make the relay the slowest hop (~1 MiB/s); there it runs on the project's Bun.
 */
function relayRuntime(): Runtime {
  const runtime = currentRuntime();
  return runtime.kind === "deno" ? { kind: "bun", path: join(ROOT, "node_modules", "bun", "bin", "bun.exe") } : runtime;
}

/** Reads `child`'s stdout line by line: each call resolves with the next line. */
export function linesOf(child: ChildProcessByStdio<Writable, Readable, null>): () => Promise<string> {
  const lines: string[] = [];
  const waiters: Array<(line: string) => void> = [];
  let pending = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (text: string) => {
    pending += text;
    for (let end = pending.indexOf("\n"); end >= 0; end = pending.indexOf("\n")) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      const waiter = waiters.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    }
  });
  return () => new Promise<string>((resolve) => (lines.length > 0 ? resolve(lines.shift() as string) : waiters.push(resolve)));
}

/** Ends a helper process and waits for it. */
async function stopChild(child: ChildProcessByStdio<Writable, Readable, null>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}

/** A UDP load balancer process (tests/fixtures/udp-balancer.ts) in front of server replicas. */
export interface UdpBalancer {
  port: number;
  /** New flows each target port got so far. */
  flows(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

/**
 * Starts a UDP fixture (tests/fixtures/`name`.ts) that takes commands on stdin and answers each
 * with a line; resolves once it printed the port it listens on.
 */
async function startUdpFixture(name: string, args: string[]) {
  const [command, base] = runtimeCommand(`tests/fixtures/${name}.ts`, relayRuntime());
  const child = spawn(command, [...base, ...args], { stdio: ["pipe", "pipe", "inherit"], cwd: ROOT });
  const nextLine = linesOf(child);
  const port = Number(/listening (\d+)/.exec(await nextLine())?.[1]);
  return { child, nextLine, port };
}

/**
 * Starts a UDP balancer on loopback that sends each new flow to one of `targetPorts` at random,
 * the same choices for the same `seed` (default 7).
 */
export async function startUdpBalancer(targetPorts: number[], options: { seed?: number } = {}): Promise<UdpBalancer> {
  const { child, nextLine, port } = await startUdpFixture("udp-balancer", [
    "--target-ports",
    targetPorts.join(","),
    "--seed",
    String(options.seed ?? 7),
  ]);
  return {
    port,
    async flows() {
      child.stdin.write("stats\n");
      return JSON.parse(await nextLine());
    },
    stop: () => stopChild(child),
  };
}

/** A lossy UDP relay process (tests/fixtures/lossy-relay.ts) in front of `targetPort`. */
export interface LossyRelay {
  port: number;
  /** Datagrams forwarded, dropped at random and dropped by a full bottleneck queue so far. */
  stats(): Promise<{ forwarded: number; dropped: number; overflowed: number }>;
  /** Moves the client's traffic to a new source port toward the target, as a NAT does. */
  rebind(): Promise<void>;
  /** Drops `loss` of the datagrams from now on (1: UDP blocked). */
  setLoss(loss: number): Promise<void>;
  /** Makes each direction a `kbps` link behind a queue of `queueBytes` (0, 0: none). */
  setBottleneck(kbps: number, queueBytes: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a lossy relay to `targetPort` on loopback, dropping `loss` of the datagrams each way. */
export async function startLossyRelay(targetPort: number, options: { loss: number; delayMs?: number; seed?: number }): Promise<LossyRelay> {
  const { child, nextLine, port } = await startUdpFixture("lossy-relay", [
    "--target-port",
    String(targetPort),
    "--loss",
    String(options.loss),
    "--delay-ms",
    String(options.delayMs ?? 0),
    "--seed",
    String(options.seed ?? 42),
  ]);
  return {
    port,
    async stats() {
      child.stdin.write("stats\n");
      return JSON.parse(await nextLine());
    },
    async rebind() {
      child.stdin.write("rebind\n");
      const line = await nextLine();
      if (!/^rebound \d+$/.test(line)) throw new Error(`the relay answered rebind with ${JSON.stringify(line)}`);
    },
    async setBottleneck(kbps: number, queueBytes: number) {
      child.stdin.write(`bottleneck ${kbps} ${queueBytes}\n`);
      const line = await nextLine();
      if (line !== `bottleneck ${kbps} ${queueBytes}`) throw new Error(`the relay answered bottleneck with ${JSON.stringify(line)}`);
    },
    async setLoss(loss: number) {
      child.stdin.write(`loss ${loss}\n`);
      const line = await nextLine();
      if (line !== `loss ${loss}`) throw new Error(`the relay answered loss ${loss} with ${JSON.stringify(line)}`);
    },
    stop: () => stopChild(child),
  };
}

/** curl's flags for a transfer through the tunnel server at `proxyPort`, at `rate` if given. */
function curlThrough(proxyPort: number, rate?: string): string[] {
  return ["-sS", "--max-time", "60", ...(rate ? ["--limit-rate", rate] : []), "-p", "--proxy", `127.0.0.1:${proxyPort}`];
}

/**
 * Downloads `mib` MiB from the HTTP target at `targetPort` with curl through the tunnel server at
 * `proxyPort`; `rate` (curl's `--limit-rate`) keeps it in flight while a test changes something.
 */
export function curlDownload(proxyPort: number, targetPort: number, options: { mib: number; rate?: string }): ReturnType<typeof run> {
  return run("curl", [...curlThrough(proxyPort, options.rate), `http://127.0.0.1:${targetPort}/mib/${options.mib}`], { timeoutMs: 70_000 });
}

/** A download and an upload through the tunnel, and whether both arrived whole. */
export interface BothWays {
  down: Awaited<ReturnType<typeof run>>;
  up: Awaited<ReturnType<typeof run>>;
  /** Asserts that curl succeeded both ways and the sha256 of each matches. */
  assertIntact(): void;
}

/**
 * Downloads `mib` MiB from the HTTP target at `targetPort` and uploads as much to it at once, with
 * curl through the tunnel server at `proxyPort`. `rate` limits each (curl's `--limit-rate`, so that
 * both are in flight when a test changes the path); `prefix` runs curl inside something else
 * (`ip netns exec NS`).
 */
export async function transferBothWays(
  proxyPort: number,
  targetPort: number,
  options: { mib: number; rate?: string; prefix?: string[] },
): Promise<BothWays> {
  const upload = Buffer.alloc(options.mib << 20, 0x3c);
  const [command, ...prefix] = [...(options.prefix ?? []), "curl"];
  const curl = [...prefix, ...curlThrough(proxyPort, options.rate)];
  const [down, up] = await Promise.all([
    run(command, [...curl, `http://127.0.0.1:${targetPort}/mib/${options.mib}`], { timeoutMs: 70_000 }),
    run(command, [...curl, "-H", "Expect:", "--data-binary", "@-", `http://127.0.0.1:${targetPort}/`], {
      input: upload,
      timeoutMs: 70_000,
    }),
  ]);
  return {
    down,
    up,
    assertIntact() {
      assert.equal(down.code, 0, down.stderr);
      assert.equal(sha256(down.stdout), expectedSha256(options.mib));
      assert.equal(up.code, 0, up.stderr);
      assert.equal(up.stdout.toString(), `${upload.length} ${sha256(upload)}`);
    },
  };
}

/** Parses Prometheus text into `name{labels}` -> value; throws on a line that is not valid. */
export function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-z_:][a-z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.e+-]+|NaN)$/i.exec(line);
    if (!match) throw new Error(`not a valid exposition line: ${line}`);
    values.set(match[1], Number(match[2]));
  }
  return values;
}

/** GETs `path` from an admin endpoint on loopback. */
export async function adminGet(port: number, path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text() };
}

/** The metrics of a role started with `--admin-addr 127.0.0.1:0`. */
export async function roleMetrics(role: RoleProcess): Promise<Map<string, number>> {
  const port = Number((await role.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
  return parseMetrics((await adminGet(port, "/metrics")).body);
}

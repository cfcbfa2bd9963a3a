/**
 * Test and benchmark harness: starts the real role scripts as separate processes on loopback,
 * a local HTTP target, and real clients (curl, raw sockets).
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type DevCertPaths, ensureDevCerts } from "../lib/dev-certs.ts";
import { type EngineName, hasNodeQuic } from "../lib/quic/mod.ts";
import { agentArgs, currentRuntime, ROOT, type Runtime, runtimeCommand, serverTlsArgs } from "../scripts/roles.ts";

export { agentArgs, currentRuntime, ROOT, type Runtime, runtimeCommand, serverTlsArgs };

declare const Deno: unknown;

/**
 * Why the tests that move real traffic are skipped on this runtime, if they are: Deno 2.9's
 * node:dgram delivers datagrams and setImmediate turns so slowly here (~1 MiB/s through the tunnel)
 * that those tests would not finish in time. The unit tests, and tunnels between Deno and the
 * other runtimes (tests/runtimes.test.ts, run on Bun and Node), still cover Deno.
 */
export const SLOW_TRANSPORT: string | undefined =
  typeof Deno !== "undefined" ? "Deno's node:dgram is too slow here for bulk tunnel tests (see tests/runtimes.test.ts)" : undefined;

/**
 * The QUIC engines the roles can use on this runtime: both on Bun (which has node:quic), quiche
 * elsewhere. Tests that carry traffic run once per engine.
 */
export const ENGINES: EngineName[] = (await hasNodeQuic()) ? ["node-quic", "quiche"] : ["quiche"];

/** A role script running as a child process, its stderr collected. */
export interface RoleProcess {
  child: ChildProcess;
  /** Everything the process wrote to stderr so far. */
  log(): string;
  /** Resolves with the first match of `pattern` in stderr (past or future). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Sends `signal` and resolves with the exit code (or signal name). */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
  /** Resolves with the exit code (or signal name) when the process ends by itself. */
  exited: Promise<number | string>;
}

/**
 * Starts `script` (server.ts, agent.ts, ...) with `args`, inside network namespace `netns` if
 * given, with QUIC engine `engine` if given (else the role's default).
 */
export function spawnRole(
  script: string,
  args: string[],
  options: { netns?: string; runtime?: Runtime; engine?: EngineName } = {},
): RoleProcess {
  const [command, base] = runtimeCommand(script, options.runtime);
  const argv = [...base, ...args, ...(options.engine ? ["--quic-engine", options.engine] : [])];
  return options.netns ? spawnProcess("ip", ["netns", "exec", options.netns, command, ...argv]) : spawnProcess(command, argv);
}

/** Starts any command as a {@link RoleProcess} (compiled binaries, chroot). */
export function spawnProcess(command: string, args: string[]): RoleProcess {
  const script = args.find((arg) => arg.endsWith(".ts")) ?? command;
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], cwd: ROOT });
  let stderr = "";
  const waiters = new Set<() => void>();
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => {
    stderr += text;
    for (const waiter of waiters) waiter();
  });
  child.stdout?.resume();
  const exited = new Promise<number | string>((resolve) => {
    child.once("exit", (code, signal) => {
      resolve(code ?? signal ?? -1);
      for (const waiter of waiters) waiter();
    });
  });
  return {
    child,
    exited,
    log: () => stderr,
    waitFor(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = pattern.exec(stderr);
          if (match) {
            done();
            resolve(match);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`${script} exited (${child.exitCode ?? child.signalCode}) before ${pattern}:\n${stderr}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} from ${script}:\n${stderr}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

let sharedCerts: DevCertPaths | undefined;

/** Development certificates for tests, made once per process in a temporary directory. */
export function testCerts(): DevCertPaths {
  sharedCerts ??= ensureDevCerts(mkdtempSync(join(tmpdir(), "quic-tunnel-certs-")));
  return sharedCerts;
}

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

/** A started server and its bound ports. */
export interface ServerProcess extends RoleProcess {
  tcpPort: number;
  quicPort: number;
}

/** Starts server.ts on loopback with free ports (or `ports`) and waits until it listens. */
export async function startServer(
  options: {
    certs?: DevCertPaths;
    args?: string[];
    tcpPort?: number;
    quicPort?: number;
    quicHost?: string;
    netns?: string;
    runtime?: Runtime;
    engine?: EngineName;
  } = {},
): Promise<ServerProcess> {
  const certs = options.certs ?? testCerts();
  const proc = spawnRole(
    "server.ts",
    [
      "--listen-tcp",
      `127.0.0.1:${options.tcpPort ?? 0}`,
      "--listen-quic",
      `${options.quicHost ?? "127.0.0.1"}:${options.quicPort ?? 0}`,
      ...serverTlsArgs(certs),
      ...(options.args ?? []),
    ],
    { netns: options.netns, runtime: options.runtime, engine: options.engine },
  );
  const match = await proc.waitFor(/server started, tcp=127\.0\.0\.1:(\d+) quic=\S+:(\d+)/);
  return Object.assign(proc, { tcpPort: Number(match[1]), quicPort: Number(match[2]) });
}

/** Starts agent.ts (or agent-tcp.ts) against `quicPort`; waits for the connection unless told not to. */
export async function startAgent(
  quicPort: number,
  options: {
    script?: string;
    certs?: DevCertPaths;
    args?: string[];
    wait?: boolean;
    serverHost?: string;
    netns?: string;
    runtime?: Runtime;
    engine?: EngineName;
  } = {},
): Promise<RoleProcess> {
  const certs = options.certs ?? testCerts();
  const proc = spawnRole(
    options.script ?? "agent.ts",
    [...agentArgs(`${options.serverHost ?? "127.0.0.1"}:${quicPort}`, certs), ...(options.args ?? [])],
    { netns: options.netns, runtime: options.runtime, engine: options.engine },
  );
  if (options.wait !== false) await proc.waitFor(/connected to server/);
  return proc;
}

/** 1 MiB of pseudo-random bytes, the same in every process (so a target in another process matches). */
const BLOCK = Buffer.concat(Array.from({ length: 1 << 15 }, (_, i) => createHash("sha256").update(`block ${i}`).digest()));

/** The n-th MiB of the deterministic download body: a random block stamped with its index. */
function bodyChunk(index: number): Buffer {
  const chunk = Buffer.from(BLOCK);
  chunk.writeUInt32BE(index, 0);
  return chunk;
}

/** sha256 (hex) of the download body of `mib` MiB that {@link startHttpTarget} serves. */
export function expectedSha256(mib: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < mib; i++) hash.update(bodyChunk(i));
  return hash.digest("hex");
}

/** The body `GET /bytes/N` answers: N bytes of the same deterministic block. */
export function bytesBody(length: number): Buffer {
  return BLOCK.subarray(0, length);
}

/**
 * A local HTTP target: `GET /mib/N` sends N MiB, `GET /bytes/N` N bytes (N at most 1 MiB), `POST`
 * answers the body's `bytes sha256`.
 */
export async function startHttpTarget(host = "127.0.0.1"): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.method === "POST" || req.method === "PUT") {
      const hash = createHash("sha256");
      let bytes = 0;
      req.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on("end", () => res.end(`${bytes} ${hash.digest("hex")}`));
      return;
    }
    const bytes = /^\/bytes\/(\d+)$/.exec(req.url ?? "");
    if (bytes) {
      const body = bytesBody(Number(bytes[1]));
      res.writeHead(200, { "content-length": body.length, "content-type": "application/octet-stream" }).end(body);
      return;
    }
    const mib = Number(/^\/mib\/(\d+)$/.exec(req.url ?? "")?.[1] ?? 0);
    if (!mib) {
      res.end("hello through the tunnel\n");
      return;
    }
    res.writeHead(200, { "content-length": mib << 20, "content-type": "application/octet-stream" });
    let index = 0;
    const pump = () => {
      while (index < mib) {
        if (!res.write(bodyChunk(index++))) return void res.once("drain", pump);
      }
      res.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Runs a command to completion, collecting stdout and stderr. */
export function run(
  command: string,
  args: string[],
  options: { input?: Buffer; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [options.input ? "pipe" : "ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let stderr = "";
    child.stdout?.on("data", (chunk: Buffer) => out.push(chunk));
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
    if (options.input) child.stdin?.end(options.input);
  });
}

/** Opens a raw TCP connection, sends `request`, and resolves with everything until the server closes. */
export function rawExchange(
  port: number,
  request: string | Buffer,
  options: { timeoutMs?: number; endAfterWrite?: boolean } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    let text = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
    });
    socket.on("error", (err) => (text ? resolve(text) : reject(err)));
    socket.on("close", () => resolve(text));
    socket.setTimeout(options.timeoutMs ?? 10_000, () => {
      socket.destroy();
      reject(new Error(`no close after ${options.timeoutMs ?? 10_000} ms; got ${JSON.stringify(text.slice(0, 200))}`));
    });
    socket.write(request);
    if (options.endAfterWrite) socket.end();
    socket.on("end", () => socket.end());
  });
}

/** sha256 (hex) of a buffer. */
export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** A lossy UDP relay process (tests/fixtures/lossy-relay.ts) in front of `targetPort`. */
export interface LossyRelay {
  port: number;
  /** Datagrams forwarded and dropped so far. */
  stats(): Promise<{ forwarded: number; dropped: number }>;
  stop(): Promise<void>;
}

/** Starts a lossy relay to `targetPort` on loopback, dropping `loss` of the datagrams each way. */
export async function startLossyRelay(targetPort: number, options: { loss: number; delayMs?: number; seed?: number }): Promise<LossyRelay> {
  const [command, base] = runtimeCommand("tests/fixtures/lossy-relay.ts");
  const child = spawn(
    command,
    [
      ...base,
      "--target-port",
      String(targetPort),
      "--loss",
      String(options.loss),
      "--delay-ms",
      String(options.delayMs ?? 0),
      "--seed",
      String(options.seed ?? 42),
    ],
    { stdio: ["pipe", "pipe", "inherit"], cwd: ROOT },
  );
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
  const nextLine = () => new Promise<string>((resolve) => (lines.length > 0 ? resolve(lines.shift() as string) : waiters.push(resolve)));
  const port = Number(/listening (\d+)/.exec(await nextLine())?.[1]);
  return {
    port,
    async stats() {
      child.stdin.write("stats\n");
      return JSON.parse(await nextLine());
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
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

/**
 * Running the role scripts from the project's own tooling (npm start, the benchmark, the soak, the
 * tests): the project root, the command that runs a script on a runtime, the certificate flags of
 * each role, and role processes started and watched through their log. Tests import this; it
 * imports nothing of the tests.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import dgram from "node:dgram";
import { mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { formatHostPort } from "../lib/hostport.ts";
import type { EngineName } from "../lib/transport/mod.ts";
import { type DevCertPaths, ensureDevCerts } from "./dev-certs.ts";

/** The project root. */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

declare const Deno: unknown;
declare const Bun: unknown;

/** A JavaScript runtime that can run the role scripts. */
export type Runtime = { kind: "bun" | "node" | "deno"; path: string };

/** The runtime running this code. */
export function currentRuntime(): Runtime {
  return { kind: typeof Deno !== "undefined" ? "deno" : typeof Bun !== "undefined" ? "bun" : "node", path: process.execPath };
}

/** The command that runs a TypeScript file of the project with `runtime` (default: the one running this code). */
export function runtimeCommand(script: string, runtime: Runtime = currentRuntime()): [string, string[]] {
  const path = join(ROOT, script);
  if (runtime.kind === "deno") return [runtime.path, ["run", "-A", path]];
  if (runtime.kind === "bun") return [runtime.path, ["run", path]];
  return [runtime.path, [path]];
}

/** The certificate flags of the server, for `certs` (paths as the process sees them). */
export function serverTlsArgs(certs: Pick<DevCertPaths, "ca" | "serverCert" | "serverKey">): string[] {
  return ["--cert-file", certs.serverCert, "--cert-key", certs.serverKey, "--client-ca-file", certs.ca];
}

/** The flags of an agent dialing `server` (host:port) with `certs`. */
export function agentArgs(server: string, certs: Pick<DevCertPaths, "ca" | "clientCert" | "clientKey">): string[] {
  return ["--server", server, "--ca-file", certs.ca, "--cert-file", certs.clientCert, "--cert-key", certs.clientKey];
}

/** A field of /proc/PID/status in MB (NaN once the process is gone). */
export function statusMb(pid: number | undefined, field: string): number {
  try {
    const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

const TICKS_PER_SECOND = 100;
/** User + system CPU seconds the process used so far (NaN once it is gone). */
export function cpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

/** A benchmark's own arguments, and those after a lone `--` that go to our server and agent. */
export function splitRoleArgs(argv: string[] = process.argv.slice(2)): { own: string[]; roles: string[] } {
  const dashes = argv.indexOf("--");
  return dashes < 0 ? { own: argv, roles: [] } : { own: argv.slice(0, dashes), roles: argv.slice(dashes + 1) };
}

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
export function spawnProcess(command: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}): RoleProcess {
  const script = args.find((arg) => arg.endsWith(".ts")) ?? command;
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], cwd: ROOT, env: options.env });
  let stderr = "";
  const waiters = new Set<() => void>();
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => {
    stderr += text;
    for (const waiter of waiters) waiter();
  });
  child.stdout?.resume();
  // "exit" can come before the last stderr chunks (Deno delivers it first): a wait fails only once
  // stderr is read to its end.
  let stderrEnded = false;
  let hasExited = false;
  child.once("close", () => {
    stderrEnded = true;
    for (const waiter of waiters) waiter();
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once("exit", (code, signal) => {
      hasExited = true;
      resolve(code ?? signal ?? -1);
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
          } else if (stderrEnded) {
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
      // Not child.kill: once a child was signalled, Deno's sets signalCode and sends nothing more.
      if (!hasExited && child.pid) process.kill(child.pid, signal);
      return exited;
    },
  };
}

let sharedCerts: DevCertPaths | undefined;

/** Development certificates made once per process in a temporary directory (tests, benchmarks). */
export function scratchCerts(): DevCertPaths {
  sharedCerts ??= ensureDevCerts(mkdtempSync(join(tmpdir(), "quic-tunnel-certs-")));
  return sharedCerts;
}

/** A started server and its bound ports. */
export interface ServerProcess extends RoleProcess {
  tcpPort: number;
  quicPort: number;
  /** The TCP transport's agent port, when started with --listen-agent-tcp. */
  agentTcpPort?: number;
}

/**
 * Starts server.ts with free ports (or `tcpPort`/`quicPort`) and waits until it listens; its TCP
 * listener is on loopback unless `tcpHost` names another address (`0.0.0.0`, `::`).
 */
export async function startServer(
  options: {
    certs?: DevCertPaths;
    args?: string[];
    tcpHost?: string;
    tcpPort?: number;
    quicPort?: number;
    quicHost?: string;
    netns?: string;
    runtime?: Runtime;
    engine?: EngineName;
  } = {},
): Promise<ServerProcess> {
  const certs = options.certs ?? scratchCerts();
  const proc = spawnRole(
    "server.ts",
    [
      "--listen-tcp",
      formatHostPort({ host: options.tcpHost ?? "127.0.0.1", port: options.tcpPort ?? 0 }),
      "--listen-quic",
      `${options.quicHost ?? "127.0.0.1"}:${options.quicPort ?? 0}`,
      ...serverTlsArgs(certs),
      ...(options.args ?? []),
    ],
    { netns: options.netns, runtime: options.runtime, engine: options.engine },
  );
  // A host is an address or [IPv6]; in JSON logs the fields that follow have no spaces between them.
  const match = await proc.waitFor(
    /server started, tcp=(?:\[[^\]]*\]|[^\s":]+):(\d+) quic=(?:\[[^\]]*\]|[^\s":]+):(\d+)(?: agent_tcp=(?:\[[^\]]*\]|[^\s":]+):(\d+))?/,
  );
  return Object.assign(proc, {
    tcpPort: Number(match[1]),
    quicPort: Number(match[2]),
    agentTcpPort: match[3] === undefined ? undefined : Number(match[3]),
  });
}

/** Starts the Go reference's quic-server from `dir` on free loopback ports; resolves once it listens. */
export async function startReferenceServer(
  dir: string,
  certs: Pick<DevCertPaths, "ca" | "serverCert" | "serverKey">,
): Promise<{ server: RoleProcess; tcpPort: number; quicPort: number }> {
  const [tcpPort, quicPort] = [await freePort("tcp"), await freePort("udp")];
  const server = spawnProcess(join(dir, "quic-server"), [
    "--listen-tcp",
    `127.0.0.1:${tcpPort}`,
    "--listen-quic",
    `127.0.0.1:${quicPort}`,
    ...serverTlsArgs(certs),
  ]);
  await server.waitFor(/server started/);
  return { server, tcpPort, quicPort };
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
  const certs = options.certs ?? scratchCerts();
  const proc = spawnRole(
    options.script ?? "agent.ts",
    [...agentArgs(`${options.serverHost ?? "127.0.0.1"}:${quicPort}`, certs), ...(options.args ?? [])],
    { netns: options.netns, runtime: options.runtime, engine: options.engine },
  );
  // An agent that never connects must not outlive the caller that gave up on it.
  if (options.wait !== false)
    await proc.waitFor(/connected to server/).catch((err) => proc.stop("SIGKILL").then(() => Promise.reject(err)));
  return proc;
}

/**
 * A free port on 127.0.0.1, for programs that cannot report a port 0 they bound (the reference,
 * `npm start`).
 */
export function freePort(kind: "tcp" | "udp"): Promise<number> {
  if (kind === "tcp") {
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
  }
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

/** Runs a command to completion, collecting stdout and stderr. */
export function run(
  command: string,
  args: string[],
  options: { input?: Buffer; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [options.input ? "pipe" : "ignore", "pipe", "pipe"], env: options.env });
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

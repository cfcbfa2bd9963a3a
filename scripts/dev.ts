/**
 * `npm start`: a working local tunnel with nothing else needed. Makes development certificates
 * (first start only, in .dev/certs), starts a demo HTTP target, the server and an agent, and prints
 * the curl line to try. Ctrl-C stops everything.
 *
 * It refuses to start, in one line and without leaving anything behind, when another `npm start`
 * runs (.dev/tunnel.pid) or one of its ports is taken; if the server or the agent exits on its own,
 * everything stops.
 *
 * The ports and the pid file can be moved with the environment (DEV_TCP_PORT, DEV_QUIC_PORT,
 * DEV_DEMO_PORT, DEV_PID_FILE), so that its tests run beside a real `npm start`.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import dgram from "node:dgram";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { dirname, join } from "node:path";
import { ensureDevCerts } from "./dev-certs.ts";
import { agentArgs, ROOT, runtimeCommand, serverTlsArgs } from "./roles.ts";

const HOST = "127.0.0.1";
const TCP_PORT = portFromEnv("DEV_TCP_PORT", 10443);
const QUIC_PORT = portFromEnv("DEV_QUIC_PORT", 8888);
const DEMO_PORT = portFromEnv("DEV_DEMO_PORT", 18080);
const PID_FILE = process.env.DEV_PID_FILE || join(ROOT, ".dev", "tunnel.pid");

/** Prints one line and exits with `code`. */
function quit(message: string, code: number): never {
  process.stderr.write(`npm start: ${message}\n`);
  process.exit(code);
}

/** A port from the environment variable `name`, or `fallback` when it is unset. */
function portFromEnv(name: string, fallback: number): number {
  const text = process.env[name];
  if (!text) return fallback;
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) quit(`${name}=${text} is not a port (1-65535)`, 1);
  return port;
}

/** The pid of a running `npm start`, if there is one. */
function runningInstance(): number | undefined {
  if (!existsSync(PID_FILE)) return undefined;
  const pid = Number(readFileSync(PID_FILE, "utf8"));
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** Resolves with an error message when `port` cannot be bound, on TCP or UDP. */
function portTaken(port: number, protocol: "tcp" | "udp"): Promise<string | undefined> {
  return new Promise((resolve) => {
    const taken = (err: NodeJS.ErrnoException) =>
      resolve(`${HOST}:${port} (${protocol.toUpperCase()}) is in use (${err.code}); free it and run npm start again`);
    if (protocol === "tcp") {
      const probe = net.createServer();
      probe.once("error", taken);
      probe.listen(port, HOST, () => probe.close(() => resolve(undefined)));
    } else {
      const probe = dgram.createSocket("udp4");
      probe.once("error", taken);
      probe.bind(port, HOST, () => probe.close(() => resolve(undefined)));
    }
  });
}

const other = runningInstance();
if (other !== undefined) quit(`a tunnel is already running (pid ${other}); stop it with Ctrl-C in its terminal, or kill ${other}`, 1);
for (const [port, protocol] of [
  [TCP_PORT, "tcp"],
  [QUIC_PORT, "udp"],
  [DEMO_PORT, "tcp"],
] as const) {
  const problem = await portTaken(port, protocol);
  if (problem) quit(problem, 1);
}
mkdirSync(dirname(PID_FILE), { recursive: true });
writeFileSync(PID_FILE, String(process.pid));
const certs = ensureDevCerts(join(ROOT, ".dev", "certs"));
const demo = http.createServer((req, res) => res.end(`hello through the tunnel: ${req.method} ${req.url}\n`));
demo.listen(DEMO_PORT, HOST);

const children: ChildProcess[] = [];
let stopping = false;

/** Stops everything this started and exits with `code`. */
function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  for (const child of children) child.kill("SIGTERM");
  demo.close();
  rmSync(PID_FILE, { force: true });
  const deadline = setTimeout(() => {
    for (const child of children) child.kill("SIGKILL");
    process.exit(code);
  }, 3_000);
  void Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once("exit", resolve)) : null))).then(
    () => {
      clearTimeout(deadline);
      process.exit(code);
    },
  );
}
process.once("SIGINT", () => stop(0));
process.once("SIGTERM", () => stop(0));

/** Starts a role script; resolves once its stderr matches `ready`. */
function start(script: string, args: string[], ready: RegExp): Promise<void> {
  const [command, base] = runtimeCommand(script);
  const child = spawn(command, [...base, ...args], { stdio: ["ignore", "inherit", "pipe"], cwd: ROOT });
  children.push(child);
  return new Promise((resolve) => {
    let seen = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      process.stderr.write(chunk);
      seen += chunk.toString();
      if (ready.test(seen)) resolve();
    });
    child.once("exit", (code) => {
      if (stopping) return;
      process.stderr.write(`npm start: ${script} exited with ${code}; stopping\n`);
      stop(1);
    });
  });
}

const tcp = `${HOST}:${TCP_PORT}`;
const quic = `${HOST}:${QUIC_PORT}`;
await start("server.ts", ["--listen-tcp", tcp, "--listen-quic", quic, ...serverTlsArgs(certs), "--v", "2"], /server started/);
await start("agent.ts", [...agentArgs(quic, certs), "--v", "2"], /connected to server/);
process.stdout.write(
  `\nThe tunnel is up: clients connect to ${tcp} (TCP), the agent to ${quic} (QUIC, mutual TLS).\n` +
    `Certificates: ${join(ROOT, ".dev", "certs")}\n\nTry:\n  curl -p --proxy ${tcp} http://${HOST}:${DEMO_PORT}/\n\nCtrl-C stops it.\n\n`,
);

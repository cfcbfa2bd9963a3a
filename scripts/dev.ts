/**
 * `npm start`: a working local tunnel with nothing else needed. Makes development certificates
 * (first start only, in .dev/certs), starts a demo HTTP target, the server and an agent, and prints
 * the curl line to try. Ctrl-C stops everything.
 *
 * @module
 */
import { spawn } from "node:child_process";
import http from "node:http";
import { join } from "node:path";
import { ensureDevCerts } from "../lib/dev-certs.ts";
import { agentArgs, ROOT, runtimeCommand, serverTlsArgs } from "../tests/harness.ts";

const TCP = "127.0.0.1:10443";
const QUIC = "127.0.0.1:8888";
const DEMO_PORT = 18080;
const certs = ensureDevCerts(join(ROOT, ".dev", "certs"));

const demo = http.createServer((req, res) => res.end(`hello through the tunnel: ${req.method} ${req.url}\n`));
demo.listen(DEMO_PORT, "127.0.0.1");

function start(script: string, args: string[]) {
  const [command, base] = runtimeCommand(script);
  const child = spawn(command, [...base, ...args], { stdio: ["ignore", "inherit", "pipe"], cwd: ROOT });
  child.stderr.on("data", (chunk: Buffer) => {
    process.stderr.write(chunk);
    if (/connected to server/.test(chunk.toString())) ready();
  });
  child.on("exit", (code) => {
    if (!stopping) {
      process.stderr.write(`${script} exited with ${code}; stopping\n`);
      stop();
    }
  });
  return child;
}

const server = start("server.ts", ["--listen-tcp", TCP, "--listen-quic", QUIC, ...serverTlsArgs(certs), "--v", "2"]);
await new Promise((resolve) => setTimeout(resolve, 500));
const agent = start("agent.ts", [...agentArgs(QUIC, certs), "--v", "2"]);

let shown = false;
function ready() {
  if (shown) return;
  shown = true;
  process.stdout.write(
    `\nThe tunnel is up: clients connect to ${TCP} (TCP), the agent to ${QUIC} (QUIC, mutual TLS).\n` +
      `Certificates: ${join(ROOT, ".dev", "certs")}\n\nTry:\n  curl -p --proxy ${TCP} http://127.0.0.1:${DEMO_PORT}/\n\nCtrl-C stops it.\n\n`,
  );
}

let stopping = false;
function stop() {
  stopping = true;
  agent.kill("SIGTERM");
  server.kill("SIGTERM");
  demo.close();
  setTimeout(() => process.exit(0), 300);
}
process.once("SIGINT", stop);
process.once("SIGTERM", stop);

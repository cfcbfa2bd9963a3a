/**
 * Many agent connections from one process, for measuring what each costs a server
 * (scripts/ha-load.ts): `--count` QUIC connections over the quiche engine, each introduced as a
 * CONNECT agent and serving the tunnels the server routes to it (CONNECT head, dial, 200, pipe;
 * no --allow, no loop refusal: a measuring client on loopback, not an agent to deploy).
 *
 * Usage: bun run scripts/many-agents.ts --server host:port --count N --ca-file F --cert-file F --cert-key F
 *
 * Prints `connected N` once every connection is introduced; exits when stdin closes.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { introduceAgent } from "../lib/control.ts";
import { parseHostPort } from "../lib/hostport.ts";
import { loadTls } from "../lib/ops/certificates.ts";
import { SERVER_NAME } from "../lib/protocol.ts";
import { loadEngine, type QuicConnection, type QuicStream } from "../lib/transport/mod.ts";
import { parseConnectTarget, readRequestHead, statusResponse } from "../lib/tunnel/connect.ts";
import { dial } from "../lib/tunnel/dial.ts";
import { pipeBoth } from "../lib/tunnel/pipe.ts";

const { values } = parseArgs({
  options: {
    server: { type: "string" },
    count: { type: "string", default: "200" },
    "ca-file": { type: "string" },
    "cert-file": { type: "string" },
    "cert-key": { type: "string" },
  },
});
const server = parseHostPort(values.server ?? "");
if (!server) throw new Error("--server host:port is required");
const tls = loadTls({
  ca: { flag: "ca-file", path: values["ca-file"] ?? "" },
  cert: { flag: "cert-file", path: values["cert-file"] ?? "" },
  key: { flag: "cert-key", path: values["cert-key"] ?? "" },
});
const engine = await loadEngine("quiche");

/** One tunnel the server routed here: the CONNECT head, the target dialed, 200, then bytes both ways. */
async function serveTunnel(stream: QuicStream): Promise<void> {
  try {
    const { head, rest } = await readRequestHead(stream, { maxBytes: 16 << 10, timeoutMs: 10_000 });
    const socket = await dial(parseConnectTarget(head.target), { timeoutMs: 5_000 });
    stream.write(statusResponse(200));
    if (rest.length > 0) socket.write(rest);
    await pipeBoth(stream, socket);
  } catch {
    stream.destroy();
  }
}

const connections: QuicConnection[] = [];
for (let index = 0; index < Number(values.count); index++) {
  const connection = await engine.connect({ host: server.host, port: server.port, serverName: SERVER_NAME, tls });
  connection.on("stream", (stream) => void serveTunnel(stream));
  await introduceAgent(connection, { kind: "connect", timeoutMs: 1_000 });
  connections.push(connection);
}
process.stdout.write(`connected ${connections.length}\n`);
process.stdin.resume();
process.stdin.on("end", () => {
  for (const connection of connections) connection.close(0, "measurement done");
  setTimeout(() => process.exit(0), 200);
});

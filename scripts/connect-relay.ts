/**
 * A plain one-process CONNECT proxy built from the same lib/ parts as the agent (request head,
 * dial, pipe) but without QUIC: the benchmark's reference for "what a TCP relay costs here".
 *
 * Usage: bun run scripts/connect-relay.ts --listen 127.0.0.1:0   (prints "listening PORT")
 *
 * @module
 */
import net from "node:net";
import { parseHostPort } from "../lib/hostport.ts";
import { HttpError, parseConnectTarget, readRequestHead, replyAndClose, statusResponse } from "../lib/tunnel/connect.ts";
import { dial } from "../lib/tunnel/dial.ts";
import { pipeBoth } from "../lib/tunnel/pipe.ts";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  process.stdout.write('Usage: bun run scripts/connect-relay.ts --listen HOST:PORT   (port 0: any; prints "listening PORT")\n');
  process.exit(0);
}
const listenAt = parseHostPort(process.argv[process.argv.indexOf("--listen") + 1] ?? "127.0.0.1:0") ?? { host: "127.0.0.1", port: 0 };
const server = net.createServer({ allowHalfOpen: true, noDelay: true }, async (socket) => {
  socket.on("error", () => {});
  try {
    const { head, rest } = await readRequestHead(socket, { maxBytes: 16384, timeoutMs: 10_000 });
    const target = await dial(parseConnectTarget(head.target), { timeoutMs: 10_000 });
    socket.write(statusResponse(200));
    if (rest.length > 0) target.write(rest);
    await pipeBoth(socket, target);
  } catch (err) {
    replyAndClose(socket, err instanceof HttpError ? err.status : 502, { reason: (err as Error).message });
  }
});
server.listen(listenAt.port, listenAt.host, () => {
  process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`);
});

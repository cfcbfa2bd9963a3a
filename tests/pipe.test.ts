import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { pipeBoth } from "../lib/pipe.ts";

/** A connected pair of real TCP sockets on loopback, both with half-close allowed. */
async function socketPair(): Promise<[net.Socket, net.Socket, () => void]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true });
  return [client, await accepted, () => server.close()];
}

function readAll(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
    });
    socket.once("end", () => resolve(text));
  });
}

test("half-close: one side's FIN passes while the other direction keeps flowing", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  const piping = pipeBoth(a, b);
  const atClient = readAll(clientA);
  const atServer = readAll(serverB);
  clientA.end("request then FIN");
  assert.equal(await atServer, "request then FIN");
  serverB.write("answer after the client's FIN, ");
  serverB.end("then FIN");
  assert.equal(await atClient, "answer after the client's FIN, then FIN");
  const result = await piping;
  assert.deepEqual(result, { sent: 16, received: 39 });
  closeA();
  closeB();
});

test("an error on one side tears down both and is reported", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  const piping = pipeBoth(a, b);
  const clientEnded = new Promise((resolve) => {
    clientA.once("end", resolve);
    clientA.once("error", resolve);
  });
  clientA.resume();
  serverB.resetAndDestroy();
  const result = await piping;
  assert.ok(result.error, "error reported");
  await clientEnded;
  clientA.destroy();
  assert.ok(a.destroyed && b.destroyed);
  closeA();
  closeB();
});

test("a stream already destroyed before the pipe starts ends the pipe", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  b.destroy();
  await new Promise((resolve) => b.once("close", resolve));
  const result = await pipeBoth(a, b);
  assert.equal(result.sent, 0);
  assert.ok(a.destroyed);
  clientA.destroy();
  serverB.destroy();
  closeA();
  closeB();
});

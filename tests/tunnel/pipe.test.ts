import assert from "node:assert/strict";
import type net from "node:net";
import { Duplex } from "node:stream";
import { test } from "node:test";
import { BufferBudget, BufferBudgetError } from "../../lib/tunnel/budget.ts";
import { pipeBoth } from "../../lib/tunnel/pipe.ts";
import { socketPair as pairOfSockets } from "../fixtures.ts";
import { pause, until } from "../wait.ts";

/**
 * {@link pairOfSockets} with errors expected. A reset is what some tests expect: tests that care
 * listen for errors, the rest ignore them (Node throws otherwise).
 */
async function socketPair(): Promise<[net.Socket, net.Socket, () => void]> {
  const [client, accepted, close] = await pairOfSockets();
  for (const socket of [client, accepted]) socket.on("error", () => {});
  return [client, accepted, close];
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

test("a FIN that arrived with the request head, before the pipe started, still passes on", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  // What a CONNECT handler does: read the head, pause. The FIN right behind it ends the paused
  // socket (Node and Bun emit "end" once nothing is buffered) before anyone pipes it.
  clientA.end("CONNECT head");
  await new Promise<void>((resolve) =>
    a.once("data", () => {
      a.pause();
      resolve();
    }),
  );
  await until(() => a.readableEnded, "the client's FIN to end the paused socket");
  const atServer = readAll(serverB);
  const piping = pipeBoth(a, b);
  assert.equal(await Promise.race([atServer, pause(2_000).then(() => "no FIN within 2 s")]), "");
  serverB.end("answer");
  assert.equal(await readAll(clientA), "answer");
  await piping;
  closeA();
  closeB();
});

test("an error on one side resets the other (never a clean FIN after a partial transfer) and is reported", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  const piping = pipeBoth(a, b);
  const clientEnded = new Promise<string>((resolve) => {
    clientA.once("end", () => resolve("clean end"));
    clientA.once("error", (err: NodeJS.ErrnoException) => resolve(`error ${err.code}`));
  });
  clientA.resume();
  serverB.write("partial answer");
  serverB.resetAndDestroy();
  const result = await piping;
  assert.ok(result.error, "error reported");
  assert.equal(await clientEnded, "error ECONNRESET");
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

test("a large chunk's memory is freed once written; shared and small ones are left alone", async () => {
  const { Duplex } = await import("node:stream");
  const whole = Buffer.alloc(256 * 1024, 1);
  const slab = Buffer.alloc(128 * 1024, 2);
  const view = slab.subarray(0, 64 * 1024);
  const small = Buffer.alloc(1024, 3);
  const copies: Buffer[] = [];
  const source = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const sink = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      copies.push(Buffer.from(chunk));
      callback();
    },
    final(callback) {
      this.push(null);
      callback();
    },
  });
  const piping = pipeBoth(source, sink);
  for (const chunk of [whole, view, small]) source.push(chunk);
  source.push(null);
  source.end();
  const result = await piping;
  assert.equal(result.sent, 256 * 1024 + 64 * 1024 + 1024);
  assert.deepEqual(
    copies.map((chunk) => [chunk.length, chunk[0]]),
    [
      [256 * 1024, 1],
      [64 * 1024, 2],
      [1024, 3],
    ],
  );
  assert.equal(whole.buffer.byteLength, 0, "the whole buffer was freed");
  assert.equal(slab[0], 2, "a view into a larger buffer was left alone");
  assert.equal(small[0], 3);
});

test("large chunks through real sockets both ways arrive intact (sha256)", async () => {
  const { createHash, randomBytes } = await import("node:crypto");
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  const piping = pipeBoth(a, b);
  const payload = randomBytes(16 << 20);
  const digest = (socket: net.Socket) =>
    new Promise<string>((resolve) => {
      const hash = createHash("sha256");
      socket.on("data", (chunk: Buffer) => hash.update(chunk));
      socket.once("end", () => resolve(hash.digest("hex")));
    });
  const atServer = digest(serverB);
  const atClient = digest(clientA);
  for (let offset = 0; offset < payload.length; offset += 1 << 20) {
    clientA.write(payload.subarray(offset, offset + (1 << 20)));
    serverB.write(payload.subarray(offset, offset + (1 << 20)));
  }
  clientA.end();
  serverB.end();
  const expected = createHash("sha256").update(payload).digest("hex");
  assert.equal(await atServer, expected);
  assert.equal(await atClient, expected);
  await piping;
  closeA();
  closeB();
});

test("a half-closed tunnel that carries nothing is ended after --half-close-timeout; an open idle one is not", async () => {
  const [clientA, a, closeA] = await socketPair();
  const [b, serverB, closeB] = await socketPair();
  const piping = pipeBoth(a, b, { halfCloseTimeoutMs: 100 });
  clientA.resume();
  serverB.resume();
  // A stretch of time is the point: twice the timeout, both directions open and nothing carried,
  // in which the pipe must not end (and the test fails the moment it does).
  const early = await Promise.race([piping.then((result) => `ended: ${result.error?.message}`), pause(200).then(() => "open")]);
  assert.equal(early, "open", "both directions open: no timeout");
  assert.equal(a.destroyed, false, "both directions open: no timeout");
  clientA.end("request, then nothing more from either side");
  const result = await piping;
  assert.match(String(result.error?.message), /half-closed and idle for 100 ms/);
  clientA.destroy();
  closeA();
  closeB();
});

test("bytes still draining to a slow reader keep a tunnel from idling out", async () => {
  // The far side takes what it was handed slowly, 64 KiB every 10 ms, from a buffer that took the
  // whole 4 MiB at once (as a QUIC stream toward a slow peer does): nothing more arrives to be read
  // for 640 ms, but the writes still going out are activity.
  let received = 0;
  const source = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const slow = new Duplex({
    allowHalfOpen: true,
    writableHighWaterMark: 8 << 20,
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      received += chunk.length;
      setTimeout(callback, 10);
    },
    final(callback) {
      this.push(null);
      callback();
    },
  });
  for (let i = 0; i < 64; i++) source.push(Buffer.alloc(64 * 1024, i));
  source.push(null);
  const result = await pipeBoth(source, slow, { idleTimeoutMs: 200 });
  assert.equal(result.error, undefined, `the tunnel ended early: ${result.error?.message} after ${received} bytes`);
  assert.equal(received, 4 << 20);
});

test("bytes an engine holds for a stalled writer count toward the budget (node:quic's writer buffer)", async () => {
  /** A stream that takes writes into an engine buffer it reports, and never has room again. */
  class EngineStream extends Duplex {
    heldForWriter = 0;
    override _read(): void {}
    override _write(chunk: Buffer): void {
      this.heldForWriter += chunk.length;
    }
  }
  const budget = new BufferBudget(1000);
  const source = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const engine = new EngineStream({ writableHighWaterMark: 16 });
  const piping = pipeBoth(source, engine, { budget });
  // 300 bytes wait in the writer's queue and 300 in the engine: over one tunnel's share (500),
  // though the queue alone is not.
  source.push(Buffer.alloc(300));
  const result = await Promise.race([piping, pause(2_000).then(() => undefined)]);
  assert.ok(result !== undefined, "the budget ended the tunnel");
  assert.ok(result.error instanceof BufferBudgetError, `ended by the budget: ${result.error}`);
  assert.match(result.error.message, /600 bytes wait/);
});

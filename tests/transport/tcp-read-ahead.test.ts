import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import { tcpEngine, tcpUnsupported } from "../../lib/transport/tcp/mod.ts";
import { ReadAhead } from "../../lib/transport/tcp/read-ahead.ts";
import type { QuicConnection } from "../../lib/transport/types.ts";
import { socketPair } from "../fixtures.ts";
import { scratchCerts } from "../harness.ts";
import { until } from "../wait.ts";
import { clientTls, collect, sendAll, serverTls } from "./conformance.ts";

const digest = (data: Buffer) => createHash("sha256").update(data).digest("hex");

describe("read ahead of Node's HTTP/2", () => {
  test("reads on while its reader is paused, up to the limit, then holds the sender back; every byte arrives in order", async () => {
    const [near, far, close] = await socketPair();
    const limit = 1 << 20;
    const wrapped = new ReadAhead(near, limit);
    wrapped.pause();
    const data = randomBytes(16 << 20);
    far.write(data);
    await until(() => wrapped.readableLength > limit, "the read-ahead to fill to its limit");
    assert.ok(near.isPaused(), "the socket is paused beyond the limit");
    const held = wrapped.readableLength;
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(wrapped.readableLength, held, "nothing more is read while the limit is passed");
    assert.ok(held < limit + (1 << 20), `at most a read past the limit is held (${held})`);
    const got = collect(wrapped as never);
    wrapped.resume();
    far.end();
    assert.deepEqual(await got, { bytes: data.length, sha256: digest(data) });
    for (const socket of [near, far]) socket.destroy();
    close();
  });

  test("writes pass through and end the socket", async () => {
    const [near, far, close] = await socketPair();
    const wrapped = new ReadAhead(near, 1 << 20);
    const data = randomBytes(4 << 20);
    const got = collect(far as never);
    wrapped.end(data);
    assert.deepEqual(await got, { bytes: data.length, sha256: digest(data) });
    for (const socket of [near, far]) socket.destroy();
    close();
  });
});

describe("TCP transport: both sides sending at once", { skip: tcpUnsupported }, () => {
  const servers: { close(): void }[] = [];
  after(() => {
    for (const server of servers) server.close();
  });

  /** Opens `count` streams from the server side at once; the agent side echoes each; true per intact echo. */
  async function echoAll(count: number, bytes: number): Promise<boolean[]> {
    const server = await tcpEngine.listen({ host: "127.0.0.1", port: 0, tls: serverTls(scratchCerts()) });
    servers.push(server);
    const accepted = new Promise<QuicConnection>((resolve) => server.once("connection", resolve));
    const client = await tcpEngine.connect({
      host: "127.0.0.1",
      port: server.address().port,
      serverName: "quic-tunnel-server",
      tls: clientTls(scratchCerts()),
    });
    const serverSide = await accepted;
    // Streams still open when the connections close end with an error; a failed echo says so.
    client.on("stream", (stream) => stream.on("error", () => {}).pipe(stream));
    try {
      return await Promise.all(
        Array.from({ length: count }, async () => {
          const stream = (await serverSide.openStream()).on("error", () => {});
          const data = randomBytes(bytes);
          const [got] = await Promise.all([collect(stream), sendAll(stream, data, 64 * 1024)]);
          return got.sha256 === digest(data) && got.bytes === data.length;
        }),
      );
    } finally {
      client.close();
    }
  }

  // Node's HTTP/2 stops reading while its own write is pending; with both sides writing more than
  // the kernel buffers hold, neither read again and the connection idled out (every run on Node).
  test("8 streams echoing 16 MiB each, more than the kernel buffers between the sides hold, all arrive intact", async () => {
    assert.deepEqual(await echoAll(8, 16 << 20), Array(8).fill(true));
  });

  // Reading on, Node's session holds more at once than its 10 MB default allows, and refused streams.
  test("200 streams echoing 1 MiB each at once: none is refused for the session's memory", async () => {
    assert.deepEqual(await echoAll(200, 1 << 20), Array(200).fill(true));
  });
});

/**
 * The lossy relay the loss, rebinding and transport tests put between agent and server keeps one
 * flow per client, as a NAT does. An agent that opens a second connection (a new UDP port) under
 * load must not take the first one's return path: with the answers of both sent to the latest
 * sender, the first connection heard nothing and timed out (the busy-node loss test on Deno).
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { test } from "node:test";
import { startLossyRelay } from "./harness.ts";
import { until } from "./wait.ts";

/** A UDP socket on loopback that collects what it receives. */
async function udpSocket(onMessage?: (message: Buffer, from: dgram.RemoteInfo, socket: dgram.Socket) => void) {
  const socket = dgram.createSocket("udp4");
  const received: string[] = [];
  socket.on("message", (message, from) => {
    received.push(message.toString());
    onMessage?.(message, from, socket);
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return { socket, received, port: socket.address().port };
}

test("two clients of the lossy relay each get their own answers back, also after a rebinding", async () => {
  // The echo answers 100 ms late, so that both clients have spoken before either answer comes back.
  const echo = await udpSocket((message, from, socket) =>
    setTimeout(() => socket.send(Buffer.from(`echo ${message}`), from.port, from.address), 100),
  );
  const relay = await startLossyRelay(echo.port, { loss: 0 });
  const first = await udpSocket();
  const second = await udpSocket();
  try {
    const both = async (one: string, two: string) => {
      const echoes = first.received.length + second.received.length + 2;
      first.socket.send(one, relay.port, "127.0.0.1");
      second.socket.send(two, relay.port, "127.0.0.1");
      await until(async () => first.received.length + second.received.length >= echoes, "both echoes", {
        timeoutMs: 5_000,
        intervalMs: 20,
      });
    };
    await both("one", "two");
    await relay.rebind();
    await both("three", "four");
    assert.deepEqual(first.received, ["echo one", "echo three"]);
    assert.deepEqual(second.received, ["echo two", "echo four"]);
  } finally {
    await relay.stop();
    for (const { socket } of [echo, first, second]) socket.close();
  }
});

test("a bottleneck sends datagrams one after another at its rate and drops what its queue cannot hold", async () => {
  const target = await udpSocket();
  const relay = await startLossyRelay(target.port, { loss: 0 });
  const client = await udpSocket();
  const arrivals: number[] = [];
  target.socket.on("message", () => arrivals.push(performance.now()));
  try {
    // 1,000 kbit/s is 8 ms per 1,000-byte datagram; a 3,000-byte queue holds three behind the one on the wire.
    await relay.setBottleneck(1_000, 3_000);
    for (let i = 0; i < 10; i++) client.socket.send(Buffer.alloc(1_000, i), relay.port, "127.0.0.1");
    await until(async () => (await relay.stats()).overflowed + arrivals.length >= 10, "every datagram sent or dropped", { intervalMs: 20 });
    await until(() => arrivals.length >= 4, "the queued datagrams");
    const stats = await relay.stats();
    assert.equal(stats.overflowed, 6);
    assert.equal(arrivals.length, 4);
    assert.ok(arrivals[3] - arrivals[0] >= 20, `the last left ${arrivals[3] - arrivals[0]} ms after the first, at the link's rate`);
  } finally {
    await relay.stop();
    for (const { socket } of [target, client]) socket.close();
  }
});

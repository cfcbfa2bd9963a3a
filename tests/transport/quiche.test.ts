/**
 * The quiche engine: the conformance suite, and what only this engine does itself (version
 * negotiation, stateless Retry, handshake limits).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { after, before, describe, test } from "node:test";
import type { TransportOptions } from "../../lib/protocol.ts";
import type { QuicServer } from "../../lib/transport/mod.ts";
import { ANNOUNCED_MAX_ACK_DELAY_MS } from "../../lib/transport/quiche/config.ts";
import type { QuicheConnection } from "../../lib/transport/quiche/connection.ts";
import { quicheEngine } from "../../lib/transport/quiche/mod.ts";
import { scratchCerts } from "../harness.ts";
import { pause, until } from "../wait.ts";
import { clientTls, conformanceSuite, serverTls } from "./conformance.ts";
import { initialPacket, parseRetry } from "./packets.ts";

conformanceSuite(quicheEngine);

describe("quiche engine: its own endpoint", () => {
  const servers: QuicServer[] = [];
  let socket: dgram.Socket;
  before(async () => {
    socket = dgram.createSocket("udp4");
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  });
  after(async () => {
    socket.close();
    await Promise.all(servers.map((server) => server.close()));
  });
  const listen = async (retry?: boolean) => {
    const server = await quicheEngine.listen({ host: "127.0.0.1", port: 0, tls: serverTls(scratchCerts()), retry });
    servers.push(server);
    return server;
  };
  /** A client connected to `server`, and the server's side of that connection. */
  const connectedPair = async (server: QuicServer, transport?: Partial<TransportOptions>) => {
    const accepted = new Promise<QuicheConnection>((resolve) =>
      server.once("connection", (connection) => resolve(connection as QuicheConnection)),
    );
    const client = (await quicheEngine.connect({
      host: "127.0.0.1",
      port: server.address().port,
      serverName: "quic-tunnel-server",
      tls: clientTls(scratchCerts()),
      transport,
    })) as QuicheConnection;
    return { client, serverSide: await accepted };
  };
  const exchange = (server: QuicServer, packet: Buffer) =>
    new Promise<Buffer>((resolve) => {
      socket.once("message", resolve);
      socket.send(packet, server.address().port, "127.0.0.1");
    });

  test("an unknown version gets version negotiation, a tokenless Initial a Retry", async () => {
    const server = await listen();
    const negotiation = await exchange(server, initialPacket({ version: 0x1a2a3a4a }));
    assert.equal(negotiation.readUInt32BE(1), 0, "version negotiation has version 0");
    const retry = await exchange(server, initialPacket());
    assert.equal(retry[0] & 0xf0, 0xf0, "long header of type Retry");
  });

  test("a genuine Retry token replayed with other connection IDs creates no state and is counted", async () => {
    const server = await listen();
    const { token, scid } = parseRetry(await exchange(server, initialPacket()));
    // In batches that fit the kernel's default receive buffer (208 KiB where net.core.rmem_max is
    // Linux's default), so that loopback drops none of them.
    for (let sent = 0; sent < 2000; ) {
      for (let i = 0; i < 25; i++, sent++) socket.send(initialPacket({ token, dcid: randomBytes(20) }), server.address().port, "127.0.0.1");
      await until(
        () => (server.stats().refused.invalid_token ?? 0) >= sent,
        () => `${sent} replayed tokens refused; so far: ${JSON.stringify(server.stats())}`,
      );
    }
    assert.equal(server.stats().handshakesInProgress, 0);
    // With the connection ID the Retry named, the token is good: it passes validation. (The answer
    // to a later tokenless Initial shows that the server has processed the packet before it.)
    socket.send(initialPacket({ token, dcid: scid }), server.address().port, "127.0.0.1");
    await exchange(server, initialPacket());
    assert.equal(server.stats().refused.invalid_token, 2000);
  });

  test("both ends announce a max_ack_delay of a couple of milliseconds, not 25: they acknowledge within the turn", async () => {
    const { client, serverSide } = await connectedPair(await listen());
    assert.equal(client.native.stats().peerMaxAckDelay, ANNOUNCED_MAX_ACK_DELAY_MS, "the server's, as the client sees it");
    assert.equal(serverSide.native.stats().peerMaxAckDelay, ANNOUNCED_MAX_ACK_DELAY_MS, "the client's, as the server sees it");
    assert.ok(ANNOUNCED_MAX_ACK_DELAY_MS <= 5);
    client.close();
  });

  test("a server pings a silent agent while a stream is open, and never an idle one", async () => {
    const { client, serverSide } = await connectedPair(await listen(false), { keepAliveMs: 0, idleTimeoutMs: 30_000 });
    // Its stream ends with an error when the client closes below: heard here, not left unhandled.
    const streamSeen = new Promise((resolve) => serverSide.once("stream", (stream) => resolve(stream.on("error", () => {}))));
    try {
      const quiet = serverSide.native.stats().sent;
      await pause(2_500);
      assert.equal(serverSide.native.stats().sent, quiet, "no stream open: the server sends nothing");
      const stream = (await client.openStream()).on("error", () => {});
      stream.write("x");
      await streamSeen;
      await pause(300); // the ACK of the stream's byte leaves first
      const before = serverSide.native.stats().sent;
      await until(() => serverSide.native.stats().sent > before, "a PING from the server while the stream is open", { timeoutMs: 4_000 });
    } finally {
      client.close();
    }
  });

  test("without Retry the handshake also completes", async () => {
    const server = await listen(false);
    const client = await quicheEngine.connect({
      host: "127.0.0.1",
      port: server.address().port,
      serverName: "quic-tunnel-server",
      tls: clientTls(scratchCerts()),
    });
    client.close();
  });
});

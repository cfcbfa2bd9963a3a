/**
 * The quiche engine: the conformance suite, and what only this engine does itself (version
 * negotiation, stateless Retry, handshake limits).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { after, before, describe, test } from "node:test";
import type { QuicServer } from "../../lib/quic/mod.ts";
import { quicheEngine } from "../../lib/quic/quiche/mod.ts";
import { scratchCerts } from "../harness.ts";
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
    for (let i = 0; i < 2000; i++) socket.send(initialPacket({ token, dcid: randomBytes(20) }), server.address().port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      const deadline = Date.now() + 5000;
      const check = () => {
        if ((server.stats().refused.invalid_token ?? 0) >= 2000) return resolve();
        if (Date.now() > deadline) return reject(new Error(`refused so far: ${JSON.stringify(server.stats())}`));
        setTimeout(check, 10);
      };
      check();
    });
    assert.equal(server.stats().handshakesInProgress, 0);
    // With the connection ID the Retry named, the token is good: it passes validation. (The answer
    // to a later tokenless Initial shows that the server has processed the packet before it.)
    socket.send(initialPacket({ token, dcid: scid }), server.address().port, "127.0.0.1");
    await exchange(server, initialPacket());
    assert.equal(server.stats().refused.invalid_token, 2000);
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

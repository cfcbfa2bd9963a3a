/**
 * The engines with each other, where the runtime has both: a client of one and a server of the
 * other agree on certificates, streams both ways, FINs, resets and close codes.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import {
  hasNodeQuic,
  loadEngine,
  type QuicConnection,
  type QuicEngine,
  type QuicError,
  type QuicServer,
  type QuicStream,
} from "../../lib/transport/mod.ts";
import { scratchCerts } from "../harness.ts";
import { clientTls, collect, sendAll, serverTls } from "./conformance.ts";

// The node-quic engine's module is loaded only where node:quic exists: elsewhere it does not load.
const engines = (await hasNodeQuic()) ? [await loadEngine("quiche"), await loadEngine("node-quic")] : [];
if (engines.length === 0) test("the engines with each other", { skip: "this runtime has no node:quic" }, () => {});
const servers: QuicServer[] = [];
after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

for (const [clientEngine, serverEngine] of engines.map((engine, i): [QuicEngine, QuicEngine] => [engine, engines[1 - i]])) {
  describe(`a ${clientEngine.name} client with a ${serverEngine.name} server`, () => {
    async function pair() {
      const server = await serverEngine.listen({ host: "127.0.0.1", port: 0, tls: serverTls(scratchCerts()) });
      servers.push(server);
      const accepted = new Promise<QuicConnection>((resolve) => server.once("connection", resolve));
      const client = await clientEngine.connect({
        host: "127.0.0.1",
        port: server.address().port,
        serverName: "quic-tunnel-server",
        tls: clientTls(scratchCerts()),
      });
      return { client, serverSide: await accepted };
    }

    test("certificates, a server-opened stream with 8 MiB each way, and half-close", async () => {
      const { client, serverSide } = await pair();
      assert.equal(client.peerSubject, "CN=quic-tunnel-server");
      assert.equal(serverSide.peerSubject, "CN=quic-tunnel-agent");
      const up = randomBytes(8 << 20);
      const down = randomBytes(8 << 20);
      const atClient = new Promise<{ bytes: number; sha256: string }>((resolve) =>
        client.once("stream", (stream) => {
          void sendAll(stream, up);
          resolve(collect(stream));
        }),
      );
      const stream = await serverSide.openStream();
      const atServer = collect(stream);
      await sendAll(stream, down);
      assert.equal((await atClient).bytes, down.length);
      assert.equal((await atServer).bytes, up.length);
      client.close();
    });

    test("a reset carries its code, and a close its code and reason", async () => {
      const { client, serverSide } = await pair();
      const arrived = new Promise<QuicStream>((resolve) => client.once("stream", resolve));
      const stream = (await serverSide.openStream()).on("error", () => {});
      stream.write("x");
      (await arrived).destroy();
      const error = await new Promise<Error>((resolve) => stream.once("error", resolve).resume());
      assert.match(error.message, /(reset|stopped) by peer/);
      const closed = new Promise<QuicError | undefined>((resolve) => client.once("close", resolve));
      serverSide.close(0x101, "agent identity not allowed");
      assert.match(String((await closed)?.message), /application code 257: agent identity not allowed/);
    });
  });
}

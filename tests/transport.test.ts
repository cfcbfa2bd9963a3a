import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import type { DevCertPaths } from "../lib/dev-certs.ts";
import {
  connect,
  listen,
  type QuicError,
  type QuicServer,
  type QuicStream,
  type TlsMaterial,
  type TransportOptions,
} from "../lib/transport.ts";
import { foreignCerts, SLOW_TRANSPORT, testCerts } from "./harness.ts";

let certs: DevCertPaths;
let foreign: DevCertPaths;
const read = (path: string) => readFileSync(path);
const serverTls = (c: DevCertPaths): TlsMaterial => ({ ca: read(c.ca), cert: read(c.serverCert), key: read(c.serverKey) });
const clientTls = (c: DevCertPaths): TlsMaterial => ({ ca: read(c.ca), cert: read(c.clientCert), key: read(c.clientKey) });

before(() => {
  certs = testCerts();
  foreign = foreignCerts();
});

async function pair(options: { server?: Partial<TransportOptions>; client?: Partial<TransportOptions>; retry?: boolean } = {}) {
  const server = await listen({ host: "127.0.0.1", port: 0, tls: serverTls(certs), transport: options.server, retry: options.retry });
  const accepted = new Promise<import("../lib/transport.ts").QuicConnection>((resolve) => server.once("connection", resolve));
  const client = await connect({
    host: "127.0.0.1",
    port: server.address().port,
    serverName: "quic-tunnel-server",
    tls: clientTls(certs),
    transport: options.client,
  });
  const serverSide = await accepted;
  // Streams still open when a test closes its connection end with an error; tests that care listen.
  for (const connection of [client, serverSide]) connection.on("stream", (stream) => stream.on("error", () => {}));
  return { server, client, serverSide };
}

const servers: QuicServer[] = [];
after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

function collect(stream: QuicStream): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    let bytes = 0;
    stream.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    stream.once("end", () => resolve({ bytes, sha256: hash.digest("hex") }));
    stream.once("error", reject);
  });
}

function sendAll(stream: QuicStream, data: Buffer, chunkSize = 256 * 1024): Promise<void> {
  return new Promise((resolve, reject) => {
    let offset = 0;
    const pump = () => {
      while (offset < data.length) {
        const chunk = data.subarray(offset, offset + chunkSize);
        offset += chunk.length;
        if (!stream.write(chunk)) return void stream.once("drain", pump);
      }
      stream.end(resolve);
    };
    stream.once("error", reject);
    pump();
  });
}

test("mutual TLS handshake exposes both certificate subjects", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  assert.equal(client.peerSubject, "CN=quic-tunnel-server");
  assert.equal(serverSide.peerSubject, "CN=quic-tunnel-agent");
  client.close();
});

test("a client certificate from another CA is rejected on both sides", { skip: SLOW_TRANSPORT }, async () => {
  const server = await listen({ host: "127.0.0.1", port: 0, tls: serverTls(certs) });
  servers.push(server);
  const rejected = new Promise<QuicError | undefined>((resolve) => server.once("rejected", (_c, error) => resolve(error)));
  const tls = { ...clientTls(foreign), ca: read(certs.ca) };
  // connect() waits for the server's verdict, so the refusal is its rejection, not a later close.
  await assert.rejects(
    connect({ host: "127.0.0.1", port: server.address().port, serverName: "quic-tunnel-server", tls }),
    /closed by peer 127\.0\.0\.1:\d+: TLS alert 48 \(unknown CA\)/,
  );
  assert.match(String((await rejected)?.message), /unknown CA|TLS alert|certificate/);
});

test("a server certificate from another CA, or for another name, is refused by the client", { skip: SLOW_TRANSPORT }, async () => {
  const server = await listen({ host: "127.0.0.1", port: 0, tls: serverTls(certs) });
  servers.push(server);
  const port = server.address().port;
  const untrusting = { ...clientTls(certs), ca: read(foreign.ca) };
  await assert.rejects(connect({ host: "127.0.0.1", port, serverName: "quic-tunnel-server", tls: untrusting }), /TLS alert|handshake/);
  await assert.rejects(connect({ host: "127.0.0.1", port, serverName: "some-other-name", tls: clientTls(certs) }), /TLS alert|handshake/);
});

test("no server answering: the handshake times out with a clear error", { skip: SLOW_TRANSPORT }, async () => {
  const silent = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => silent.bind(0, "127.0.0.1", resolve));
  const started = Date.now();
  await assert.rejects(
    connect({
      host: "127.0.0.1",
      port: silent.address().port,
      serverName: "quic-tunnel-server",
      tls: clientTls(certs),
      transport: { handshakeTimeoutMs: 300 },
    }),
    /handshake with 127\.0\.0\.1:\d+ timed out after 300 ms/,
  );
  assert.ok(Date.now() - started < 2000);
  silent.close();
});

test("64 MiB each way at once arrive intact (sha256)", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  const up = randomBytes(64 << 20);
  const down = randomBytes(64 << 20);
  const serverGot = new Promise<{ bytes: number; sha256: string }>((resolve) => {
    serverSide.once("stream", (stream) => {
      void sendAll(stream, down);
      resolve(collect(stream));
    });
  });
  const stream = client.openStream();
  const clientGot = collect(stream);
  await sendAll(stream, up);
  const [atServer, atClient] = await Promise.all([serverGot, clientGot]);
  assert.deepEqual(atServer, { bytes: up.length, sha256: createHash("sha256").update(up).digest("hex") });
  assert.deepEqual(atClient, { bytes: down.length, sha256: createHash("sha256").update(down).digest("hex") });
  client.close();
});

test("200 parallel streams, opened by the server side, each echo intact", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  client.on("stream", (stream) => stream.pipe(stream));
  const results = await Promise.all(
    Array.from({ length: 200 }, async () => {
      const stream = serverSide.openStream();
      const data = randomBytes(64 * 1024);
      const got = collect(stream);
      await sendAll(stream, data, 8192);
      return (await got).sha256 === createHash("sha256").update(data).digest("hex");
    }),
  );
  assert.equal(results.filter(Boolean).length, 200);
  client.close();
});

test("half-close: the FIN reaches the peer while the other direction keeps flowing", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  serverSide.once("stream", async (stream) => {
    const request = await collect(stream);
    stream.write(`got ${request.bytes} bytes, `);
    setTimeout(() => stream.end("then FIN"), 50);
  });
  const stream = client.openStream();
  const answer = new Promise<string>((resolve) => {
    let text = "";
    stream.on("data", (chunk) => {
      text += chunk;
    });
    stream.once("end", () => resolve(text));
  });
  stream.end("hello");
  assert.equal(await answer, "got 5 bytes, then FIN");
  client.close();
});

test("a FIN with no data at all is an empty stream, not a hang", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  const got = new Promise<{ bytes: number }>((resolve) => serverSide.once("stream", (stream) => resolve(collect(stream))));
  client
    .openStream()
    .on("error", () => {})
    .end(Buffer.alloc(0));
  assert.equal((await got).bytes, 0);
  client.close();
});

test("a reset stream is an error on the other side", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  serverSide.once("stream", (stream) => {
    stream.once("data", () => stream.destroy());
  });
  const stream = client.openStream();
  stream.write("trigger");
  const error = await new Promise<Error>((resolve) => {
    stream.once("error", resolve);
    stream.resume();
  });
  assert.match(error.message, /stream 0 (reset|stopped) by peer/);
  client.close();
});

test("the peer's stream limit fails clearly and frees up when streams finish", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair({ client: { maxStreams: 2 } });
  servers.push(server);
  client.on("stream", (stream) => stream.pipe(stream));
  const first = serverSide.openStream();
  serverSide
    .openStream()
    .on("error", () => {})
    .end("b");
  assert.throws(() => serverSide.openStream(), /stream limit reached/);
  const echoed = collect(first);
  first.end("a");
  await echoed;
  let reopened: QuicStream | undefined;
  for (let i = 0; i < 100 && !reopened; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    try {
      reopened = serverSide.openStream().on("error", () => {});
    } catch {
      // not yet: the peer grants more streams once it has collected finished ones
    }
  }
  assert.ok(reopened, "a new stream could be opened after others finished");
  client.close();
});

test("a reader that does not read slows the writer: memory stays bounded", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair();
  servers.push(server);
  let accepted = 0;
  const receiving = new Promise<QuicStream>((resolve) => client.once("stream", resolve));
  const stream = serverSide.openStream().on("error", () => {});
  const chunk = Buffer.alloc(64 * 1024, 1);
  let writing = true;
  const pump = () => {
    while (writing) {
      const ok = stream.write(chunk, () => {
        accepted += chunk.length;
      });
      if (!ok) return void stream.once("drain", pump);
    }
  };
  pump();
  const reader = await receiving;
  reader.pause();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const stalledAt = accepted;
  assert.ok(stalledAt < 48 << 20, `writer was held back (accepted ${stalledAt} bytes)`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.ok(accepted - stalledAt < 1 << 20, "no progress while the reader is paused");
  writing = false;
  stream.end();
  const rest = collect(reader);
  reader.resume();
  const { bytes } = await rest;
  assert.ok(bytes >= stalledAt, "everything accepted was delivered once the reader resumed");
  client.close();
});

test("idle timeout closes both sides with a timeout reason", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client, serverSide } = await pair({ server: { idleTimeoutMs: 300 }, client: { idleTimeoutMs: 300, keepAliveMs: 0 } });
  servers.push(server);
  const [clientError, serverError] = await Promise.all([
    new Promise<QuicError | undefined>((resolve) => client.once("close", resolve)),
    new Promise<QuicError | undefined>((resolve) => serverSide.once("close", resolve)),
  ]);
  assert.match(String(clientError?.message), /timed out/);
  assert.match(String(serverError?.message), /timed out/);
});

test("keep-alive holds an idle connection open past the idle timeout", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client } = await pair({ server: { idleTimeoutMs: 400 }, client: { idleTimeoutMs: 400, keepAliveMs: 100 } });
  servers.push(server);
  await new Promise((resolve) => setTimeout(resolve, 1200));
  assert.equal(client.closed, false);
  client.close();
});

test("the server answers an unknown version with version negotiation and a tokenless Initial with Retry", {
  skip: SLOW_TRANSPORT,
}, async () => {
  const server = await listen({ host: "127.0.0.1", port: 0, tls: serverTls(certs) });
  servers.push(server);
  const socket = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  const exchange = (packet: Buffer) =>
    new Promise<Buffer>((resolve) => {
      socket.once("message", resolve);
      socket.send(packet, server.address().port, "127.0.0.1");
    });
  const initial = (version: number) => {
    const packet = Buffer.alloc(1200);
    packet[0] = 0xc0; // long header, Initial
    packet.writeUInt32BE(version, 1);
    packet[5] = 8;
    randomBytes(8).copy(packet, 6);
    packet[14] = 8;
    randomBytes(8).copy(packet, 15);
    packet[23] = 0; // token length
    packet.writeUInt16BE(0x4000 | 1100, 24);
    return packet;
  };
  const negotiation = await exchange(initial(0x1a2a3a4a));
  assert.equal(negotiation.readUInt32BE(1), 0, "version negotiation has version 0");
  const retry = await exchange(initial(1));
  assert.equal(retry[0] & 0xf0, 0xf0, "long header of type Retry");
  socket.close();
});

test("without Retry the handshake also completes", { skip: SLOW_TRANSPORT }, async () => {
  const { server, client } = await pair({ retry: false });
  servers.push(server);
  assert.equal(client.established, true);
  client.close();
});

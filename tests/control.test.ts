import assert from "node:assert/strict";
import { Duplex } from "node:stream";
import { test } from "node:test";
import { type Announcement, introduceAgent, parseControlLine, serveControlStream } from "../lib/control.ts";
import { NO_IDENTIFIERS } from "../lib/identifiers.ts";
import type { QuicConnection } from "../lib/transport/mod.ts";
import { until } from "./wait.ts";

test("control lines: an agent's hello with its kind, GOAWAY, and nothing else", () => {
  assert.deepEqual(parseControlLine("AGENT connect"), { type: "hello", kind: "connect" });
  assert.deepEqual(parseControlLine("AGENT passthrough"), { type: "hello", kind: "passthrough" });
  assert.deepEqual(parseControlLine("GOAWAY"), { type: "goaway" });
  assert.deepEqual(parseControlLine("FEATURES stream-opened"), { type: "features", features: ["stream-opened"] });
  for (const other of [undefined, "", "AGENT", "AGENT socks", "CONNECT a:1 HTTP/1.1", "GOAWAY now", "FEATURES", "FEATURES Stream_Opened"]) {
    assert.equal(parseControlLine(other), undefined, String(other));
  }
});

/**
 * Two ends of one in-process stream, as an agent's control stream and the server's side of it;
 * destroying one resets the other, as a QUIC stream's reset does.
 */
function streamPair(): [Duplex, Duplex] {
  const end = (peer: () => Duplex) =>
    new Duplex({
      read() {},
      write(chunk, _encoding, callback) {
        peer().push(chunk);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
      destroy(error, callback) {
        peer().destroy();
        callback(error);
      },
    });
  const agentSide: Duplex = end(() => serverSide);
  const serverSide: Duplex = end(() => agentSide);
  return [agentSide, serverSide];
}

/** A connection whose every new stream's server side is handed to `serve`. */
function connectionServedBy(serve: (serverSide: Duplex) => void): QuicConnection {
  const openStream = async () => {
    const [agentSide, serverSide] = streamPair();
    serve(serverSide);
    return agentSide;
  };
  return { openStream } as unknown as QuicConnection;
}

/** What the agent makes of the server's answer to its hello when the server side is served by `serve`. */
function announced(serve: (serverSide: Duplex) => void): Promise<Announcement> {
  return introduceAgent(connectionServedBy(serve), { kind: "connect", timeoutMs: 1_000 });
}

test("the hello's answer names the server's listeners and which replica it is, of how many", async () => {
  const identity = { id: "replica-2", count: 3 };
  const listeners = () => [{ host: "127.0.0.1", port: 8443 }];
  assert.deepEqual(await announced((side) => void serveControlStream(side, { listeners, identity })), {
    listeners: [{ host: "127.0.0.1", port: 8443 }],
    server: identity,
    abandoned: false,
  });
});

test("an answer from a server before --server-count, or with a bad SERVER line, names no replica", async () => {
  for (const answer of [
    "LISTENERS 127.0.0.1:8443\n",
    "LISTENERS 127.0.0.1:8443\nSERVER two words 3\n",
    "LISTENERS 127.0.0.1:8443\nSERVER a 0\n",
  ]) {
    const result = await announced((side) => {
      side.once("data", () => side.end(answer));
    });
    assert.deepEqual(result, { listeners: [{ host: "127.0.0.1", port: 8443 }], server: undefined, abandoned: false }, answer);
  }
});

test("a server that never answers (the reference's) leaves the agent as it was; one that ends at once abandons it", async () => {
  const { late, ...silent } = await announced(() => {});
  assert.deepEqual(silent, { abandoned: false });
  assert.ok(late instanceof Promise, "the answer is still awaited");
  assert.deepEqual(await announced((side) => void side.once("data", () => side.end())), { abandoned: true });
});

test("an answer cut short by the timeout keeps its whole lines, and the rest of it comes late", async () => {
  const { late, ...result } = await announced((side) => {
    side.once("data", () => {
      side.write("LISTENERS 127.0.0.1:8443\nSERVER replica-");
      setTimeout(() => side.end("2 3\n"), 1_200);
    });
  });
  assert.deepEqual(result, { listeners: [{ host: "127.0.0.1", port: 8443 }], server: undefined, abandoned: false });
  // A slow path must not lose the server's id: the agent would hold a duplicate for ever.
  assert.deepEqual(await late, { listeners: [{ host: "127.0.0.1", port: 8443 }], server: { id: "replica-2", count: 3 }, abandoned: false });
});

test("the hello waits until the server has taken the agent's identity", async () => {
  // The server lets an agent take tunnels on its hello: routed by identity, the first must find it.
  const seen: string[] = [];
  const identity = { id: "node-a", identifiers: NO_IDENTIFIERS };
  const connection = connectionServedBy((side) => {
    side.once("data", (line: Buffer) => {
      if (line.toString().startsWith("IDENTIFY")) {
        setTimeout(() => {
          seen.push("identity taken");
          side.destroy();
        }, 100);
      } else {
        seen.push("hello");
        side.end("LISTENERS\n");
      }
    });
  });
  await introduceAgent(connection, { kind: "connect", identity, timeoutMs: 1_000 });
  assert.deepEqual(seen, ["identity taken", "hello"]);
});

test("an identity the server never takes (the reference's) delays the hello only until the timeout, and its stream is ended", async () => {
  const streams: Duplex[] = [];
  const connection = connectionServedBy((side) => streams.push(side));
  const started = performance.now();
  const identity = { id: "node-a", identifiers: NO_IDENTIFIERS };
  await introduceAgent(connection, { kind: "connect", identity, timeoutMs: 100, takeTimeoutMs: 300 });
  assert.ok(performance.now() - started < 900, "the hello went on after 100 ms");
  assert.equal(streams.length, 2);
  await until(() => streams[0].destroyed, "the identity stream to be ended");
});

import assert from "node:assert/strict";
import { Duplex } from "node:stream";
import { test } from "node:test";
import { type Announcement, announceAgent, identifyAgent, parseControlLine, serveControlStream } from "../lib/control.ts";
import { NO_IDENTIFIERS } from "../lib/identifiers.ts";
import type { QuicConnection } from "../lib/transport/mod.ts";
import { until } from "./wait.ts";

test("control lines: an agent's hello with its kind, GOAWAY, and nothing else", () => {
  assert.deepEqual(parseControlLine("AGENT connect"), { type: "hello", kind: "connect" });
  assert.deepEqual(parseControlLine("AGENT passthrough"), { type: "hello", kind: "passthrough" });
  assert.deepEqual(parseControlLine("GOAWAY"), { type: "goaway" });
  for (const other of [undefined, "", "AGENT", "AGENT socks", "CONNECT a:1 HTTP/1.1", "GOAWAY now"]) {
    assert.equal(parseControlLine(other), undefined, String(other));
  }
});

/** Two ends of one in-process stream, as an agent's control stream and the server's side of it. */
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
    });
  const agentSide: Duplex = end(() => serverSide);
  const serverSide: Duplex = end(() => agentSide);
  return [agentSide, serverSide];
}

/** What `announceAgent` makes of the server's answer when the server side is served by `serve`. */
async function announced(serve: (serverSide: Duplex) => void): Promise<Announcement> {
  const [agentSide, serverSide] = streamPair();
  serve(serverSide);
  const connection = { openStream: async () => agentSide } as unknown as QuicConnection;
  return announceAgent(connection, { kind: "connect", timeoutMs: 1_000 });
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
  assert.deepEqual(await announced(() => {}), { abandoned: false });
  assert.deepEqual(await announced((side) => void side.once("data", () => side.end())), { abandoned: true });
});

test("an answer cut short by the timeout keeps its whole lines", async () => {
  const result = await announced((side) => {
    side.once("data", () => side.write("LISTENERS 127.0.0.1:8443\nSERVER replica-"));
  });
  assert.deepEqual(result, { listeners: [{ host: "127.0.0.1", port: 8443 }], server: undefined, abandoned: false });
});

test("an identity stream the server never ends (the reference's) is ended after its timeout", async () => {
  const [agentSide] = streamPair();
  const connection = { openStream: async () => agentSide } as unknown as QuicConnection;
  await identifyAgent(connection, { id: "node-a", identifiers: NO_IDENTIFIERS }, { timeoutMs: 50 });
  await until(() => agentSide.destroyed, "the identity stream to be ended");
});

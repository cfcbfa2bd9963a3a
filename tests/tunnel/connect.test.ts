import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import {
  firstBytes,
  HttpError,
  impossibleRequestStart,
  parseConnectTarget,
  parseRequestHead,
  readRequestHead,
  replyAndClose,
  statusResponse,
} from "../../lib/tunnel/connect.ts";

const LIMITS = { maxBytes: 1024, timeoutMs: 1_000 };

test("parses a CONNECT head with headers", () => {
  const head = parseRequestHead("CONNECT kubelet:10250 HTTP/1.1\r\nHost: kubelet:10250\r\nUser-Agent: kube-apiserver");
  assert.equal(head.method, "CONNECT");
  assert.equal(head.target, "kubelet:10250");
  assert.deepEqual(head.headers, [
    ["host", "kubelet:10250"],
    ["user-agent", "kube-apiserver"],
  ]);
});

test("rejects malformed heads with 400", () => {
  for (const bad of [
    "CONNECT",
    "CONNECT a:1",
    "CONNECT a:1 HTTP/2.0",
    "CONNECT a:1 HTTP/1.1 extra",
    "CONNECT a:1 HTTP/1.1\r\nno colon",
    "CON(NECT a:1 HTTP/1.1",
    "CONNECT a:1 HTTP/1.1\r\n: empty",
  ]) {
    assert.throws(
      () => parseRequestHead(bad),
      (err: Error) => err instanceof HttpError && err.status === 400,
      bad,
    );
  }
});

test("CONNECT targets: names, IPv4, IPv6 literals; anything else is 400", () => {
  assert.deepEqual(parseConnectTarget("[::1]:22"), { host: "::1", port: 22 });
  assert.deepEqual(parseConnectTarget("127.0.0.1:80"), { host: "127.0.0.1", port: 80 });
  for (const bad of ["example.com", "http://example.com/", ":80", "host:0", "[::1]", "host:65536"]) {
    assert.throws(
      () => parseConnectTarget(bad),
      (err: Error) => err instanceof HttpError && err.status === 400,
      bad,
    );
  }
});

test("reads a head split across chunks and keeps the bytes after it", async () => {
  const input = new PassThrough();
  const reading = readRequestHead(input, LIMITS);
  input.write("CONNECT a:1 HT");
  input.write("TP/1.1\r\nHost: a:1\r\n\r");
  input.write("\nfirst tunnel bytes");
  const { head, rest } = await reading;
  assert.equal(head.target, "a:1");
  assert.equal(rest.toString(), "first tunnel bytes");
  assert.equal(input.isPaused(), true);
});

test("accepts bare LF line endings", async () => {
  const input = new PassThrough();
  const reading = readRequestHead(input, LIMITS);
  input.write("CONNECT a:1 HTTP/1.0\nHost: a\n\nrest");
  const { head, rest } = await reading;
  assert.equal(head.version, "HTTP/1.0");
  assert.equal(rest.toString(), "rest");
});

test("a head over the size limit is 431, even without a line end", async () => {
  const input = new PassThrough();
  const reading = readRequestHead(input, LIMITS);
  input.write(`CONNECT a:1 HTTP/1.1\r\nX-Big: ${"x".repeat(2000)}`);
  await assert.rejects(reading, (err: Error) => err instanceof HttpError && err.status === 431);
});

test("a head that does not complete in time is 408", async () => {
  const input = new PassThrough();
  const reading = readRequestHead(input, { maxBytes: 1024, timeoutMs: 50 });
  input.write("CONNECT a:1 HTTP/1.1\r\n");
  await assert.rejects(reading, (err: Error) => err instanceof HttpError && err.status === 408);
});

test("a peer that closes mid-head is a plain error, not a status", async () => {
  const input = new PassThrough();
  const reading = readRequestHead(input, LIMITS);
  input.end("CONNECT a:1");
  await assert.rejects(reading, (err: Error) => !(err instanceof HttpError) && /before a complete request head/.test(err.message));
});

test("status replies are valid HTTP with a reason body", () => {
  assert.equal(statusResponse(200), "HTTP/1.1 200 OK\r\n\r\n");
  const reply = statusResponse(405, "only CONNECT");
  assert.match(reply, /^HTTP\/1\.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n/);
  assert.match(reply, /Content-Length: 13\r\n/);
  assert.ok(reply.endsWith("\r\n\r\nonly CONNECT\n"));
  assert.match(statusResponse(503), /^HTTP\/1\.1 503 Service Unavailable\r\n/);
});

test("replyAndClose answers, ends and drains the request", async () => {
  const socket = new PassThrough();
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise((resolve) => socket.once("close", resolve));
  replyAndClose(socket, 502, { reason: "refused", lingerMs: 50 });
  await closed;
  assert.match(Buffer.concat(chunks).toString(), /^HTTP\/1\.1 502 Bad Gateway\r\n[\s\S]*refused\n$/);
});

test("the first bytes that cannot begin an HTTP request are refused at once; those that can, are not", () => {
  const start = (text: string | Buffer) => impossibleRequestStart(Buffer.isBuffer(text) ? text : Buffer.from(text, "latin1"));
  for (const possible of [
    "",
    "C",
    "CONNECT",
    "CONNECT ",
    "CONNECT a",
    "CONNECT a:1 ",
    "CONNECT a:1 HT",
    "CONNECT a:1 HTTP/1.",
    "CONNECT a:1 HTTP/1.1\r",
  ]) {
    assert.equal(start(possible), undefined, JSON.stringify(possible));
  }
  assert.equal(start("CONNECT a:1 HTTP/1.1\r\nHost: x"), undefined);
  for (const impossible of [
    Buffer.from("160301", "hex"),
    "\x00",
    "hello there\r\n",
    "GET  / HTTP/1.1",
    "CONNECT a:1 SPDY/3",
    "CONNECT a:1 HTTP/2.0\r\n",
    "CONNECT a\x01b HTTP/1.1",
  ]) {
    assert.ok(start(impossible), JSON.stringify(impossible.toString()));
  }
});

test("an agent's answer is awaited: its first byte is left for the pipe; silence is a timeout, an end or a reset is not", async () => {
  const answering = new PassThrough();
  const waited = firstBytes(answering, 1_000);
  answering.write("HTTP/1.1 200 OK\r\n\r\n");
  assert.equal(await waited, "answered");
  assert.equal(String(answering.read()), "HTTP/1.1 200 OK\r\n\r\n");

  const started = performance.now();
  assert.equal(await firstBytes(new PassThrough(), 50), "timeout");
  assert.ok(performance.now() - started >= 45);

  const ending = new PassThrough();
  const ended = firstBytes(ending, 10_000);
  ending.end();
  assert.equal(await ended, "ended");

  const reset = new PassThrough();
  reset.on("error", () => {});
  const failed = firstBytes(reset, 10_000);
  reset.destroy(new Error("stream 4 reset by peer"));
  assert.equal(await failed, "ended");
});

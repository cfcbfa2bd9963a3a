/**
 * The admin endpoint's own limits, in process: /metrics rendered at most once per cache period,
 * requests answered at a bounded rate with a bounded queue (the rest refused after a pause), and
 * anything but a small GET or HEAD refused.
 */
import assert from "node:assert/strict";
import type http from "node:http";
import net from "node:net";
import { after, test } from "node:test";
import { getLogger } from "@logtape/logtape";
import { type AdminLimits, startAdmin } from "../../lib/ops/admin.ts";
import { Gauge, Registry } from "../../lib/ops/metrics.ts";

const servers: http.Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

/** An admin endpoint whose registry counts its renders. */
async function admin(limits: AdminLimits): Promise<{ port: number; renders: () => number }> {
  const registry = new Registry();
  let renders = 0;
  new Gauge(registry, "renders", "Times the registry was rendered.", () => [[{}, ++renders]]);
  const { server, port } = await startAdmin(
    { host: "127.0.0.1", port: 0 },
    { registry, log: getLogger(["quic-tunnel", "test"]), notReady: () => undefined },
    limits,
  );
  servers.push(server);
  return { port, renders: () => renders };
}

/** Sends `request` on a new connection; resolves with the status and when it came (ms after the call). */
function exchange(port: number, request: string): Promise<{ status: number; ms: number; text: string }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => socket.write(request));
    let text = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const head = text.indexOf("\r\n\r\n");
      // A HEAD answer names the length of a body it does not carry.
      const length = request.startsWith("HEAD ") ? 0 : Number(/\r\ncontent-length: *(\d+)/i.exec(text)?.[1] ?? -1);
      if (head >= 0 && length >= 0 && text.length >= head + 4 + length) {
        socket.destroy();
        resolve({ status: Number(text.slice(9, 12)), ms: performance.now() - started, text });
      }
    });
    // A server refusing a head it will not read may reset the connection after its answer.
    socket.on("error", (err) =>
      text ? resolve({ status: Number(text.slice(9, 12)), ms: performance.now() - started, text }) : reject(err),
    );
    socket.on("close", () => resolve({ status: Number(text.slice(9, 12)) || 0, ms: performance.now() - started, text }));
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no answer in 10 s: ${JSON.stringify(text)}`)));
  });
}

const GET = (path: string) => `GET ${path} HTTP/1.1\r\nHost: admin\r\n\r\n`;
const GENEROUS: AdminLimits = { metricsCacheMs: 300, ratePerSecond: 10_000, burst: 10_000, maxWaiting: 100, refusalDelayMs: 100 };

test("/metrics is rendered at most once per cache period, and served from it meanwhile", async () => {
  const { port, renders } = await admin(GENEROUS);
  const first = await exchange(port, GET("/metrics"));
  const bodies = await Promise.all(Array.from({ length: 50 }, () => exchange(port, GET("/metrics"))));
  assert.equal(first.status, 200);
  const after = renders();
  assert.ok(after <= 2, `51 scrapes within moments cost ${after} renders`);
  assert.ok(bodies.every((body) => body.text.includes(`renders ${after}\n`) || body.text.includes(`renders ${after - 1}\n`)));
  const deadline = performance.now() + 5_000;
  // Bounded: a new render is due 300 ms after the last.
  while (renders() === after && performance.now() < deadline) await exchange(port, GET("/metrics"));
  assert.equal(renders(), after + 1, "a scrape after the period renders again");
});

test("requests beyond the rate wait their turn; beyond the queue they get 503 after a pause", async () => {
  const limits: AdminLimits = { metricsCacheMs: 1_000, ratePerSecond: 20, burst: 5, maxWaiting: 10, refusalDelayMs: 300 };
  const { port } = await admin(limits);
  const answers = await Promise.all(Array.from({ length: 30 }, () => exchange(port, GET("/healthz"))));
  const served = answers.filter((answer) => answer.status === 200).sort((a, b) => a.ms - b.ms);
  const refused = answers.filter((answer) => answer.status === 503);
  assert.equal(served.length, 15, "the burst and the queue are served");
  assert.equal(refused.length, 15, "the rest are refused");
  // Ten waited at 20 a second: the last is served about half a second in.
  assert.ok(served[14].ms >= 350, `the queue was paced (last served after ${served[14].ms.toFixed(0)} ms)`);
  assert.ok(
    refused.every((answer) => answer.ms >= 250 && /connection: close/i.test(answer.text)),
    "refusals come after the pause, and close",
  );
});

test("anything but a small GET or HEAD is refused, and the connection closed", async () => {
  const { port } = await admin(GENEROUS);
  assert.equal((await exchange(port, "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")).status, 405);
  assert.equal((await exchange(port, "GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")).status, 413);
  assert.equal((await exchange(port, "GET /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")).status, 413);
  assert.equal((await exchange(port, GET(`/${"a".repeat(2000)}`))).status, 414);
  const huge = await exchange(port, `GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: ${"b".repeat(64 * 1024)}\r\n\r\n`);
  assert.notEqual(huge.status, 200, "a 64 KiB head is not served");
  const head = await exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
  assert.equal(head.status, 200);
});

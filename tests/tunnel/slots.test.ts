import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { getLogger } from "@logtape/logtape";
import { Registry } from "../../lib/ops/metrics.ts";
import { Tunnels } from "../../lib/tunnel/slots.ts";
import { socketPair } from "../fixtures.ts";

const log = getLogger(["quic-tunnel", "test"]);
const series = (registry: Registry) =>
  new Map(
    registry
      .render()
      .split("\n")
      .filter((line) => line && !line.startsWith("#"))
      .map((line) => [line.slice(0, line.lastIndexOf(" ")), Number(line.slice(line.lastIndexOf(" ") + 1))]),
  );

/** A peer whose writes are collected, so that a refusal's answer can be read. */
function peer(): PassThrough & { written(): string } {
  const stream = new PassThrough();
  let text = "";
  const write = stream.write.bind(stream);
  stream.write = ((chunk: string | Buffer, ...rest: unknown[]) => {
    text += chunk.toString();
    return (write as (...args: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof stream.write;
  const end = stream.end.bind(stream);
  stream.end = ((chunk?: string | Buffer, ...rest: unknown[]) => {
    if (typeof chunk === "string" || Buffer.isBuffer(chunk)) text += chunk.toString();
    return (end as (...args: unknown[]) => PassThrough)(chunk, ...rest);
  }) as typeof stream.end;
  return Object.assign(stream, { written: () => text });
}

test("every series exists from the start, at 0", () => {
  const registry = new Registry();
  new Tunnels(registry, { role: "server", max: 1, log });
  const values = series(registry);
  assert.equal(values.get("quic_tunnel_tunnels_active"), 0);
  for (const outcome of ["ok", "error", "over_limit", "no_agent", "bad_request", "timeout", "denied", "loop", "dial_failed"]) {
    assert.equal(values.get(`quic_tunnel_tunnels_total{outcome="${outcome}"}`), 0, outcome);
  }
  assert.equal(values.get('quic_tunnel_bytes_total{direction="up"}'), 0);
});

test("a slot is taken at accept, so the limit counts tunnels still reading their head; beyond it a 503", async () => {
  const registry = new Registry();
  const tunnels = new Tunnels(registry, { role: "server", max: 1, log });
  const first = tunnels.open(peer(), { http: true, id: "one" });
  assert.ok(first, "the first tunnel gets the slot before it has read anything");
  const second = peer();
  assert.equal(tunnels.open(second, { http: true, id: "two" }), undefined);
  assert.match(second.written(), /^HTTP\/1\.1 503 Service Unavailable\r\n[\s\S]*server tunnel limit \(1\) reached/);
  first.refuse("bad_request", 400, "malformed request line");
  first.refuse("timeout", 408, "a second refusal of the same tunnel counts nothing");
  assert.equal(tunnels.count, 0);
  assert.ok(tunnels.open(peer(), { http: true, id: "three" }), "the slot was given back once");
  const values = series(registry);
  assert.equal(values.get('quic_tunnel_tunnels_total{outcome="over_limit"}'), 1);
  assert.equal(values.get('quic_tunnel_tunnels_total{outcome="bad_request"}'), 1);
  assert.equal(values.get('quic_tunnel_tunnels_total{outcome="timeout"}'), 0);
  assert.equal(values.get('quic_tunnel_connect_responses_total{code="400"}'), 1);
});

/** A connected pair of real TCP sockets on loopback, with half-close allowed. */
test("a carried tunnel counts its bytes and outcome, and whenIdle waits for it", async () => {
  const registry = new Registry();
  const tunnels = new Tunnels(registry, { role: "agent", max: 0, log });
  const [client, clientSide, closeClients] = await socketPair();
  const [targetSide, target, closeTargets] = await socketPair();
  const tunnel = tunnels.open(clientSide, { http: false, id: "stream 1" });
  assert.ok(tunnel);
  const idle = tunnels.whenIdle(5_000);
  const carried = tunnel.carry(targetSide);
  client.end("up!");
  target.end("down.");
  client.resume();
  target.resume();
  const result = await carried;
  closeClients();
  closeTargets();
  assert.deepEqual({ sent: result.sent, received: result.received, error: result.error }, { sent: 3, received: 5, error: undefined });
  assert.equal(await idle, true);
  const values = series(registry);
  assert.equal(values.get('quic_tunnel_tunnels_total{outcome="ok"}'), 1);
  assert.equal(values.get('quic_tunnel_bytes_total{direction="up"}'), 3);
  assert.equal(values.get('quic_tunnel_bytes_total{direction="down"}'), 5);
});

test("whenIdle gives up after its timeout while a tunnel stays open", async () => {
  const tunnels = new Tunnels(new Registry(), { role: "agent", max: 0, log });
  tunnels.open(peer(), { http: true, id: "held" });
  assert.equal(await tunnels.whenIdle(30), false);
});

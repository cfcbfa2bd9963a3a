import assert from "node:assert/strict";
import { test } from "node:test";
import { Registry } from "../../lib/ops/metrics.ts";
import type { PipeResult } from "../../lib/tunnel/pipe.ts";
import { Tunnels } from "../../lib/tunnel/slots.ts";

test("counts open tunnels against the limit and records outcomes and bytes", async () => {
  const registry = new Registry();
  const tunnels = new Tunnels(registry, { max: 2 });
  let finish: (result: PipeResult) => void = () => {};
  const first = tunnels.track(new Promise((resolve) => (finish = resolve)));
  void tunnels.track(Promise.resolve({ sent: 1, received: 2, error: new Error("reset") }));
  assert.equal(tunnels.full, true);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(tunnels.count, 1);
  assert.equal(tunnels.full, false);
  tunnels.refused("no_agent");
  const idle = tunnels.whenIdle(1000);
  finish({ sent: 10, received: 20 });
  await first;
  assert.equal(await idle, true);
  const text = registry.render();
  for (const line of [
    "quic_tunnel_tunnels_active 0",
    'quic_tunnel_tunnels_total{outcome="error"} 1',
    'quic_tunnel_tunnels_total{outcome="ok"} 1',
    'quic_tunnel_tunnels_total{outcome="no_agent"} 1',
    'quic_tunnel_bytes_total{direction="up"} 11',
    'quic_tunnel_bytes_total{direction="down"} 22',
  ]) {
    assert.ok(text.includes(`${line}\n`), line);
  }
});

test("whenIdle gives up after its timeout while a tunnel stays open", async () => {
  const tunnels = new Tunnels(new Registry(), { max: 0 });
  void tunnels.track(new Promise(() => {}));
  assert.equal(tunnels.full, false, "0 means no limit");
  assert.equal(await tunnels.whenIdle(30), false);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { Counter, Gauge, Histogram, Registry } from "../../lib/ops/metrics.ts";

test("renders counters, gauges and histograms in Prometheus text format", () => {
  const registry = new Registry();
  const tunnels = new Counter(registry, "quic_tunnel_tunnels_total", "Tunnels ended, by outcome.");
  const active = new Gauge(registry, "quic_tunnel_tunnels_active", "Tunnels open now.");
  new Gauge(registry, "quic_tunnel_quic_rtt_seconds", "RTT.", () => [[{ agent: 'a"b' }, 0.001]]);
  const dial = new Histogram(registry, "quic_tunnel_dial_duration_seconds", "Dial time.", [0.01, 0.1]);
  tunnels.inc({ outcome: "ok" });
  tunnels.inc({ outcome: "ok" });
  tunnels.inc({ outcome: "error" }, 3);
  active.add(2);
  active.add(-1);
  dial.observe(0.005);
  dial.observe(0.05);
  dial.observe(5);
  assert.equal(
    registry.render(),
    [
      "# HELP quic_tunnel_tunnels_total Tunnels ended, by outcome.",
      "# TYPE quic_tunnel_tunnels_total counter",
      'quic_tunnel_tunnels_total{outcome="ok"} 2',
      'quic_tunnel_tunnels_total{outcome="error"} 3',
      "# HELP quic_tunnel_tunnels_active Tunnels open now.",
      "# TYPE quic_tunnel_tunnels_active gauge",
      "quic_tunnel_tunnels_active 1",
      "# HELP quic_tunnel_quic_rtt_seconds RTT.",
      "# TYPE quic_tunnel_quic_rtt_seconds gauge",
      'quic_tunnel_quic_rtt_seconds{agent="a\\"b"} 0.001',
      "# HELP quic_tunnel_dial_duration_seconds Dial time.",
      "# TYPE quic_tunnel_dial_duration_seconds histogram",
      'quic_tunnel_dial_duration_seconds_bucket{le="0.01"} 1',
      'quic_tunnel_dial_duration_seconds_bucket{le="0.1"} 2',
      'quic_tunnel_dial_duration_seconds_bucket{le="+Inf"} 3',
      "quic_tunnel_dial_duration_seconds_sum 5.055",
      "quic_tunnel_dial_duration_seconds_count 3",
      "",
    ].join("\n"),
  );
});

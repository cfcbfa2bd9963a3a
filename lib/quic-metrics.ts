/**
 * Per-connection QUIC path statistics as Prometheus series, read from quiche at scrape time.
 *
 * @module
 */
import { Counter, Gauge, type Registry } from "./metrics.ts";
import type { QuicConnection } from "./transport.ts";

/** Registers RTT, congestion window and packet counters for the connections `list` returns. */
export function registerQuicMetrics(registry: Registry, list: () => Iterable<QuicConnection>): void {
  const per = (read: (connection: QuicConnection) => number) => () =>
    [...list()].filter((c) => !c.closed).map((c) => [{ peer: c.peer }, read(c)] as [Record<string, string>, number]);
  const path = (connection: QuicConnection) =>
    connection.native.pathStats().find((stats) => stats.active) ?? connection.native.pathStats()[0];
  new Gauge(
    registry,
    "quic_tunnel_quic_rtt_seconds",
    "Smoothed round-trip time of the QUIC path, per peer.",
    per((c) => (path(c)?.rtt ?? 0) / 1000),
  );
  new Gauge(
    registry,
    "quic_tunnel_quic_cwnd_bytes",
    "Congestion window of the QUIC path, per peer.",
    per((c) => path(c)?.cwnd ?? 0),
  );
  new Gauge(
    registry,
    "quic_tunnel_quic_streams_open",
    "Streams open on the QUIC connection, per peer.",
    per((c) => c.streamCount),
  );
  new Counter(
    registry,
    "quic_tunnel_quic_packets_sent_total",
    "QUIC packets sent, per peer.",
    per((c) => c.native.stats().sent),
  );
  new Counter(
    registry,
    "quic_tunnel_quic_packets_lost_total",
    "QUIC packets declared lost, per peer.",
    per((c) => c.native.stats().lost),
  );
}

/**
 * Per-connection QUIC path statistics as Prometheus series, read from the engine at scrape time.
 *
 * @module
 */

import type { ConnectionStats, QuicConnection, QuicServer } from "../transport/mod.ts";
import type { Logger } from "./log.ts";
import { Counter, Gauge, type Registry } from "./metrics.ts";

/** Registers RTT, congestion window, stream and packet series for the connections `list` returns. */
export function registerQuicMetrics(registry: Registry, list: () => Iterable<QuicConnection>): void {
  const per = (read: (connection: QuicConnection, stats: ConnectionStats) => number) => () =>
    [...list()]
      .filter((connection) => !connection.closed)
      .map((connection) => [{ peer: connection.peer }, read(connection, connection.stats())] as [Record<string, string>, number]);
  new Gauge(
    registry,
    "quic_tunnel_quic_rtt_seconds",
    "Smoothed round-trip time of the QUIC path, per peer.",
    per((_, stats) => stats.rttMs / 1000),
  );
  new Gauge(
    registry,
    "quic_tunnel_quic_cwnd_bytes",
    "Congestion window of the QUIC path, per peer.",
    per((_, stats) => stats.cwndBytes),
  );
  new Gauge(
    registry,
    "quic_tunnel_quic_streams_open",
    "Streams open on the QUIC connection, per peer.",
    per((connection) => connection.streamCount),
  );
  new Counter(
    registry,
    "quic_tunnel_quic_packets_sent_total",
    "QUIC packets sent, per peer.",
    per((_, stats) => stats.packetsSent),
  );
  new Counter(
    registry,
    "quic_tunnel_quic_packets_lost_total",
    "QUIC packets declared lost, per peer.",
    per((_, stats) => stats.packetsLost),
  );
}

/** Registers the QUIC server's handshake series: handshakes under way, Initials refused by reason. */
export function registerQuicServerMetrics(registry: Registry, server: QuicServer): void {
  new Gauge(registry, "quic_tunnel_quic_handshakes_in_progress", "QUIC handshakes under way on the server.", () => [
    [{}, server.stats().handshakesInProgress],
  ]);
  new Counter(
    registry,
    "quic_tunnel_quic_initials_refused_total",
    "QUIC long-header packets that began no handshake, by reason (invalid_token, handshake_limit, address_limit, ...; quiche engine: unsupported_version answered with Version Negotiation, short_unsupported_version and version_negotiation dropped).",
    () => Object.entries(server.stats().refused).map(([reason, count]) => [{ reason }, count]),
  );
}

/**
 * Logs, every `intervalMs` (10 s) and only when there were some, how many Initials the server
 * dropped before a handshake began and why: a flood costs a line now and then, not a line each.
 */
export function reportRefusedInitials(server: QuicServer, log: Logger, intervalMs = 10_000): void {
  let before: Record<string, number> = {};
  setInterval(() => {
    const refused = server.stats().refused;
    const fresh = Object.entries(refused)
      .map(([reason, count]) => [reason, count - (before[reason] ?? 0)] as const)
      .filter(([, count]) => count > 0);
    before = refused;
    if (fresh.length > 0)
      log.warn("dropped QUIC Initials in the last {seconds} s: {counts}", {
        seconds: intervalMs / 1000,
        counts: Object.fromEntries(fresh),
      });
  }, intervalMs).unref();
}

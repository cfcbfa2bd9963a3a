/**
 * What agent.ts and agent-tcp.ts share around their per-stream handling: certificates, the
 * reconnecting QUIC connection, tunnel bookkeeping and metrics, the admin endpoint and the
 * graceful shutdown (GOAWAY to the server, let tunnels finish, close).
 *
 * @module
 */
import { startAdmin } from "../ops/admin.ts";
import { loadTls, watchTls } from "../ops/certificates.ts";
import { type AGENT_FLAGS, exitWithError, transportOptions } from "../ops/cli.ts";
import type { FlagValues } from "../ops/flags.ts";
import type { Logger } from "../ops/log.ts";
import { Counter, Gauge, type Registry } from "../ops/metrics.ts";
import { registerQuicMetrics } from "../ops/quic-metrics.ts";
import { onShutdown } from "../ops/shutdown.ts";
import { type EngineChoice, loadEngine, type QuicEngine, type QuicStream } from "../quic/mod.ts";
import { Tunnels } from "../tunnel/slots.ts";
import { type AgentHandle, runAgent } from "./connections.ts";

/** The running agent, as its per-stream handler sees it. */
export interface AgentRole {
  registry: Registry;
  tunnels: Tunnels;
  /** True once a shutdown started: new streams are refused. */
  draining(): boolean;
}

/**
 * Loads the certificates (exiting with an error naming the flag when they are unusable), starts
 * the admin endpoint if asked, and keeps the agent connected, handing each stream to `serve`.
 */
export async function startAgentRole(
  name: string,
  options: {
    flags: FlagValues<typeof AGENT_FLAGS>;
    log: Logger;
    /** Where the shared metrics join the role's own. */
    registry: Registry;
    serve: (stream: QuicStream, role: AgentRole) => void;
  },
): Promise<AgentRole> {
  const { flags, log } = options;
  const tlsFiles = {
    ca: { flag: "ca-file", path: flags["ca-file"] },
    cert: { flag: "cert-file", path: flags["cert-file"] },
    key: { flag: "cert-key", path: flags["cert-key"] },
  };
  let tls: ReturnType<typeof loadTls>;
  let transport: ReturnType<typeof transportOptions>;
  let engine: QuicEngine;
  try {
    tls = loadTls(tlsFiles);
    transport = transportOptions(flags);
    engine = await loadEngine(flags["quic-engine"] as EngineChoice);
  } catch (err) {
    exitWithError(name, err);
  }
  // Rotated certificates apply from the next connection; the open one keeps working.
  watchTls(tlsFiles, {
    onChange: (material) => {
      tls = material;
      log.info("certificate files changed; the next connection uses them");
    },
    onError: (err) => log.error("certificate reload failed, keeping the previous certificates: {error}", { error: err }),
  });

  const { registry } = options;
  const tunnels = new Tunnels(registry, { max: flags["max-tunnels"] });
  let draining = false;
  const role: AgentRole = { registry, tunnels, draining: () => draining };
  const streamsRefused = new Counter(registry, "quic_tunnel_streams_refused_total", "Streams refused while draining.");
  const agent: AgentHandle = runAgent(
    {
      engine,
      server: flags.server,
      serverName: flags["server-name"],
      tls: () => tls,
      transport: { ...transport, keepAliveMs: flags["keep-alive"] },
      backoff: { minMs: flags["reconnect-min"], maxMs: flags["reconnect-max"] },
      log,
      // Enough connections for --max-tunnels where a connection takes only 100 (node-quic).
      maxConnections: Math.min(100, Math.max(1, Math.ceil((flags["max-tunnels"] || 10_000) / 100))),
    },
    (stream) => {
      if (!draining) return options.serve(stream, role);
      streamsRefused.inc();
      stream.on("error", () => {}).destroy();
    },
  );
  new Gauge(registry, "quic_tunnel_server_connected", "1 while the agent is connected to the server.", () => [
    [{}, agent.connections.length > 0 ? 1 : 0],
  ]);
  new Gauge(registry, "quic_tunnel_server_connections", "QUIC connections to the server (more are opened under load).", () => [
    [{}, agent.connections.length],
  ]);
  registerQuicMetrics(registry, () => agent.connections);

  const admin = flags["admin-addr"];
  if (admin) {
    const { port } = await startAdmin(admin, {
      registry,
      notReady: () => (draining ? "shutting down" : agent.connections.length > 0 ? undefined : "not connected to the server"),
    }).catch((err) => exitWithError(name, err));
    log.info("admin endpoint on {address}", { address: `${admin.host}:${port}` });
  }

  onShutdown(log, {
    graceMs: flags["shutdown-grace"],
    drain: async (graceMs) => {
      draining = true;
      await agent.goAway();
      if (!(await tunnels.whenIdle(graceMs)))
        log.warn("closing {count} tunnels still open after the grace period", { count: tunnels.count });
      agent.stop();
      await agent.done;
    },
  });
  return role;
}

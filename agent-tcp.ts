/**
 * quic-agent-tcp: the passthrough agent. Dials the tunnel server over QUIC with a client
 * certificate and pipes every stream the server opens to one fixed `--upstream host:port`; no
 * CONNECT involved. Reconnects forever with backoff.
 *
 * Usage: bun run agent-tcp.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key --upstream 10.0.0.1:443
 *
 * @module
 */
import { type AgentRole, startAgentRole } from "./lib/agent/role.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { AGENT_FLAGS, parseCommandLine } from "./lib/ops/cli.ts";
import { setupLogging } from "./lib/ops/log.ts";
import { Registry } from "./lib/ops/metrics.ts";
import type { QuicStream } from "./lib/quic/mod.ts";
import { dial } from "./lib/tunnel/dial.ts";
import { pipeBoth } from "./lib/tunnel/pipe.ts";

// Flags: the reference's, then ours.
const flags = parseCommandLine(
  {
    name: "quic-agent-tcp",
    summary: "Passthrough tunnel agent: dials the server over QUIC and pipes every tunnelled connection to --upstream.",
  },
  {
    ...AGENT_FLAGS,
    upstream: { kind: "hostport", value: "host:port", required: true, help: "TCP address every tunnelled connection is piped to." },
  },
);
const log = setupLogging("agent-tcp", { verbosity: flags.v, format: flags["log-format"] });
const upstream = formatHostPort(flags.upstream);

// Certificates, transport, admin endpoint and shutdown: shared with agent.ts.
await startAgentRole("quic-agent-tcp", { flags, log, registry: new Registry(), serve: (stream, role) => void serveUpstream(stream, role) });

// Per stream: dial the upstream; if that fails (or too many tunnels are open), reset the stream so
// the client's connection ends.
async function serveUpstream(stream: QuicStream, { tunnels }: AgentRole): Promise<void> {
  stream.on("error", () => {}); // reported by pipeBoth
  stream.pause();
  if (tunnels.full) {
    log.warn("stream {stream}: refused, {max} tunnels open", { stream: stream.id, max: tunnels.max });
    tunnels.refused("over_limit");
    stream.destroy();
    return;
  }
  const started = performance.now();
  let socket: Awaited<ReturnType<typeof dial>>;
  try {
    socket = await dial(flags.upstream, { timeoutMs: flags["dial-timeout"] });
  } catch (err) {
    log.warn("stream {stream}: upstream {upstream} failed: {reason}", { stream: stream.id, upstream, reason: (err as Error).message });
    tunnels.refused("dial_failed");
    stream.destroy();
    return;
  }
  const result = await tunnels.track(pipeBoth(stream, socket, { idleTimeoutMs: flags["tunnel-idle-timeout"] }));
  log.debug("tunnel to {upstream} closed", {
    stream: stream.id,
    upstream,
    up: result.sent,
    down: result.received,
    ms: Math.round(performance.now() - started),
    error: result.error,
  });
}

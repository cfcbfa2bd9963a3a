/**
 * quic-agent-tcp: the passthrough agent. Dials the tunnel server over QUIC with a client
 * certificate and pipes every stream the server opens to one fixed `--upstream host:port`; no
 * CONNECT involved (it tells our server so, which then reads nothing from its clients).
 * Reconnects forever with backoff.
 *
 * Usage: bun run agent-tcp.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key --upstream 10.0.0.1:443
 *
 * @module
 */
import { connectionOptions, drainAgent, registerConnectionMetrics, runAgent } from "./lib/agent/connections.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { startAdmin } from "./lib/ops/admin.ts";
import { type CertificateWatch, loadTls, tlsMaterial, watchCertificates } from "./lib/ops/certificates.ts";
import { AGENT_FLAGS, checkAgentFlags, exitWithError, parseCommandLine, transportWarnings, tunnelTimeouts } from "./lib/ops/cli.ts";
import { setupLogging } from "./lib/ops/log.ts";
import { Registry } from "./lib/ops/metrics.ts";
import { logStrayErrors, onReload, onShutdown } from "./lib/ops/process.ts";
import { type EngineChoice, loadEngine, type QuicEngine, type QuicStream } from "./lib/transport/mod.ts";
import { dial } from "./lib/tunnel/dial.ts";
import { Tunnels } from "./lib/tunnel/slots.ts";
import { skipStreamOpened } from "./lib/tunnel/stream-opened.ts";

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
const log = setupLogging("agent-tcp", { verbosity: flags.v, format: flags["log-format"], ignored: flags.ignored });
logStrayErrors(log);
// SIGHUP reloads the certificate files (as their change does) and never ends the role.
const certificateWatches: CertificateWatch[] = [];
onReload(log, certificateWatches);
const upstream = formatHostPort(flags.upstream);

// Certificates and transport.
const registry = new Registry();
const tlsFiles = {
  ca: { flag: "ca-file", path: flags["ca-file"] },
  cert: { flag: "cert-file", path: flags["cert-file"] },
  key: { flag: "cert-key", path: flags["cert-key"] },
};
let tls: ReturnType<typeof loadTls>;
let engine: QuicEngine;
let warnings: string[];
let connecting: ReturnType<typeof connectionOptions>;
try {
  tls = loadTls(tlsFiles);
  checkAgentFlags(flags);
  engine = await loadEngine(flags["quic-engine"] as EngineChoice);
  warnings = transportWarnings(engine, flags);
  connecting = connectionOptions(flags, { kind: "passthrough", engine, tls: () => tls, log });
} catch (err) {
  exitWithError("quic-agent-tcp", err);
}
for (const warning of warnings) log.warn("{warning}", { warning });
// Rotated certificates apply from the next connection; the open ones keep working.
certificateWatches.push(watchCertificates(tlsFiles, { log, registry, onChange: (pems) => (tls = tlsMaterial(pems)) }));

const tunnels = new Tunnels(registry, { role: "agent", max: flags["max-tunnels"], log, maxBuffered: flags["max-buffered"] });
let draining = false;
const agent = runAgent(
  connecting,
  (stream) =>
    void serveUpstream(stream).catch((err) => log.error("stream {stream} failed unexpectedly: {error}", { stream: stream.id, error: err })),
);
registerConnectionMetrics(registry, agent);

/** How long a stream's first bytes may wait for the rest of what could be the stream-opened marker. */
const STREAM_OPENED_WAIT_MS = 200;

// Per stream: a slot, a dial to the upstream, then both ways. A refusal resets the stream, so the
// client's connection ends as an error.
async function serveUpstream(stream: QuicStream): Promise<void> {
  const tunnel = tunnels.open(stream, { http: false, id: `stream ${stream.id}`, fields: { upstream } });
  if (!tunnel) return;
  if (draining) return tunnel.refuse("draining", 503, "the agent is shutting down");
  stream.pause();
  // The bytes our server opens the stream with, so that an upstream that speaks first is heard.
  await skipStreamOpened(stream, { waitMs: STREAM_OPENED_WAIT_MS });
  try {
    const socket = await dial(flags.upstream, { timeoutMs: flags["dial-timeout"] });
    await tunnel.carry(socket, tunnelTimeouts(flags));
  } catch (err) {
    tunnel.refuse("dial_failed", 502, `upstream ${upstream}: ${(err as Error).message}`);
  }
}

// Admin endpoint: ready while connected.
const admin = flags["admin-addr"];
if (admin) {
  await startAdmin(admin, {
    registry,
    log,
    notReady: () => (draining ? "shutting down" : agent.connections.length > 0 ? undefined : "not connected to the server"),
    readyDetail: () => (agent.transport ? `connected over ${agent.transport}` : undefined),
  }).catch((err) => exitWithError("quic-agent-tcp", err));
}

// Shutdown: tell the server, let open tunnels finish, then close.
onShutdown(log, {
  graceMs: flags["shutdown-grace"],
  drain: async (graceMs) => {
    draining = true;
    await drainAgent(agent, tunnels, { graceMs, log });
  },
});

/**
 * quic-server: accepts HTTP CONNECT clients (kube-apiserver, curl) on TCP, TLS or a Unix socket and
 * agents on QUIC with mutual TLS, and carries every client connection over a new QUIC stream to the
 * next agent, round-robin. It does not parse what clients send; the agent answers the CONNECT.
 *
 * Usage: bun run server.ts --cert-file tls.crt --cert-key tls.key --client-ca-file ca.crt
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import type { Server } from "node:net";
import type { Duplex } from "node:stream";
import type { Server as TlsServer } from "node:tls";
import { formatHostPort } from "./lib/hostport.ts";
import { startAdmin } from "./lib/ops/admin.ts";
import { loadTls, watchFiles, watchTls } from "./lib/ops/certificates.ts";
import { COMMON_FLAGS, exitWithError, parseCommandLine, TRANSPORT_FLAGS, transportOptions } from "./lib/ops/cli.ts";
import { LogThrottle, setupLogging } from "./lib/ops/log.ts";
import { Counter, Gauge, Registry } from "./lib/ops/metrics.ts";
import { registerQuicMetrics, registerQuicServerMetrics } from "./lib/ops/quic-metrics.ts";
import { onShutdown } from "./lib/ops/shutdown.ts";
import { AGENT_NOT_ALLOWED, GOAWAY } from "./lib/protocol.ts";
import { type EngineChoice, loadEngine, type QuicConnection, type QuicEngine } from "./lib/quic/mod.ts";
import { AgentPool } from "./lib/server/agent-pool.ts";
import { listenTcp, listenUnix, readFrontendTls } from "./lib/server/frontends.ts";
import { replyAndClose } from "./lib/tunnel/connect.ts";
import { pipeBoth } from "./lib/tunnel/pipe.ts";
import { Tunnels } from "./lib/tunnel/slots.ts";

// Flags: the reference's, then ours.
const flags = parseCommandLine(
  {
    name: "quic-server",
    summary: "Reverse HTTP CONNECT tunnel server: TCP clients in, QUIC agents (mutual TLS) out.",
  },
  {
    "listen-tcp": {
      kind: "hostport",
      value: "host:port",
      default: "0.0.0.0:8443",
      help: "TCP address for CONNECT clients ([::]:port for IPv6).",
    },
    "listen-quic": { kind: "hostport", value: "host:port", default: "0.0.0.0:8888", help: "UDP address for agents' QUIC connections." },
    "cert-file": { kind: "string", value: "path", required: true, help: "PEM server certificate presented to agents." },
    "cert-key": { kind: "string", value: "path", required: true, help: "PEM private key of the server certificate." },
    "client-ca-file": {
      kind: "string",
      value: "path",
      required: true,
      help: "PEM CA bundle that verifies agents' client certificates (required).",
    },
    "agent-subject": {
      kind: "list",
      value: "name",
      help: "Only agents whose certificate CN or a SAN equals this may register; repeatable. None: any the CA signed.",
    },
    "tcp-cert-file": { kind: "string", value: "path", help: "Serve TLS on --listen-tcp with this PEM certificate (plain TCP unless set)." },
    "tcp-cert-key": { kind: "string", value: "path", help: "PEM private key for --tcp-cert-file." },
    "tcp-client-ca-file": { kind: "string", value: "path", help: "Require TCP clients to present a certificate this CA signed." },
    "listen-uds": { kind: "string", value: "path", help: "Also accept CONNECT clients on this Unix domain socket." },
    "quic-retry": { kind: "bool", default: "true", help: "Validate agent addresses with a stateless QUIC Retry before keeping state." },
    "agent-wait": {
      kind: "duration",
      value: "dur",
      default: "5s",
      help: "How long a client waits for an agent with a free stream (agents at their limit open more connections) before 503.",
    },
    ...TRANSPORT_FLAGS,
    ...COMMON_FLAGS,
  },
);
const log = setupLogging("server", { verbosity: flags.v, format: flags["log-format"] });

// Certificates.
const tlsFiles = {
  ca: { flag: "client-ca-file", path: flags["client-ca-file"] },
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
  if (Boolean(flags["tcp-cert-file"]) !== Boolean(flags["tcp-cert-key"])) throw new Error("--tcp-cert-file and --tcp-cert-key go together");
  if (flags["tcp-client-ca-file"] && !flags["tcp-cert-file"])
    throw new Error("--tcp-client-ca-file needs --tcp-cert-file and --tcp-cert-key");
} catch (err) {
  exitWithError("quic-server", err);
}

// Metrics: agents, tunnels, QUIC paths.
const registry = new Registry();
const agents = new AgentPool<QuicConnection>();
const tunnels = new Tunnels(registry, { max: flags["max-tunnels"] });
const agentsRejected = new Counter(registry, "quic_tunnel_agents_rejected_total", "Agent connections refused (certificate, identity).");
new Gauge(registry, "quic_tunnel_agents_connected", "Agents connected and taking tunnels.", () => [[{}, agents.size]]);
new Gauge(registry, "quic_tunnel_agent_info", "Connected agents by address and certificate subject (value 1).", () =>
  agents.agents.map((agent) => [{ peer: agent.peer, subject: agent.peerSubject }, 1]),
);
registerQuicMetrics(registry, () => agents.agents);

// Transport: agents connect over QUIC and join the round-robin pool.
const quic = await engine
  .listen({ ...flags["listen-quic"], tls, transport, retry: flags["quic-retry"] })
  .catch((err) => exitWithError("quic-server", err));
quic.on("connection", (agent) => {
  if (!identityAllowed(agent.peerCertificate)) {
    rejectAgent(agent.peer, `certificate ${agent.peerSubject} is not among --agent-subject`);
    agent.close(AGENT_NOT_ALLOWED, "agent identity not allowed");
    return;
  }
  agents.add(agent);
  log.info("agent {peer} connected", { peer: agent.peer, subject: agent.peerSubject, agents: agents.size });
  agent.on("stream", (stream) => listenForGoAway(agent, stream));
  agent.once("close", (error) => {
    agents.remove(agent);
    log.info("agent {peer} disconnected: {reason}", { peer: agent.peer, reason: error?.message ?? "closed", agents: agents.size });
  });
});
// Refused handshakes are counted; a flood of them (a stranger, a misconfigured fleet) is logged at a
// bounded rate, and Initials dropped before any handshake as one summary line every 10 s.
registerQuicServerMetrics(registry, quic);
const rejectedLog = new LogThrottle({ limit: 10, windowMs: 10_000 });
function rejectAgent(peer: string, reason: string): void {
  agentsRejected.inc();
  const allowed = rejectedLog.allow((count) => log.warn("{count} more rejected agents were not logged", { count }));
  if (allowed) log.warn("rejected agent {peer}: {reason}", { peer, reason });
}
quic.on("rejected", (peer, error) => rejectAgent(peer, error?.message ?? "handshake failed"));
let refusedBefore: Record<string, number> = {};
setInterval(() => {
  const refused = quic.stats().refused;
  const fresh = Object.entries(refused)
    .map(([reason, count]) => [reason, count - (refusedBefore[reason] ?? 0)] as const)
    .filter(([, count]) => count > 0);
  refusedBefore = refused;
  if (fresh.length > 0) log.warn("dropped QUIC Initials in the last 10 s: {counts}", { counts: Object.fromEntries(fresh) });
}, 10_000).unref();
quic.on("error", (err) => log.error("QUIC socket error: {error}", { error: err }));
// Rotated certificates (cert-manager, a secret update) apply to new handshakes; agents stay connected.
watchTls(tlsFiles, {
  onChange: (material) => {
    quic.setTls(material);
    log.info("certificate files changed; new agent handshakes use them");
  },
  onError: (err) => log.error("certificate reload failed, keeping the previous certificates: {error}", { error: err }),
});

/** True when no --agent-subject is set, or the certificate's CN or a SAN is one of them. */
function identityAllowed(certificate: X509Certificate | undefined): boolean {
  const allowed = flags["agent-subject"];
  if (allowed.length === 0) return true;
  if (!certificate) return false;
  const names = [
    ...certificate.subject.split("\n").flatMap((part) => (part.startsWith("CN=") ? [part.slice(3)] : [])),
    ...(certificate.subjectAltName ?? "").split(", ").map((entry) => entry.replace(/^[A-Za-z ]+:/, "")),
  ];
  return names.some((name) => allowed.includes(name));
}

/** An agent about to shut down opens a stream saying GOAWAY: route no new tunnels to it. */
function listenForGoAway(agent: QuicConnection, stream: Duplex): void {
  let text = "";
  stream.on("error", () => {});
  stream.on("data", (chunk: Buffer) => {
    text += chunk.toString("latin1");
    if (text === GOAWAY) {
      agents.remove(agent);
      log.info("agent {peer} is draining; no new tunnels go to it", { peer: agent.peer, agents: agents.size });
    }
    if (text.length >= GOAWAY.length) stream.destroy();
  });
  stream.on("end", () => stream.destroy());
}

// Per client: a new stream on the next agent, piped both ways until both sides are done.
async function onClient(socket: Duplex & { remoteAddress?: string; remotePort?: number }): Promise<void> {
  const client = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : "unix";
  socket.on("error", () => {}); // reported by pipeBoth, or irrelevant once refused
  if (tunnels.full) {
    tunnels.refused("over_limit");
    log.warn("refused client {client}: {max} tunnels open", { client, max: tunnels.max });
    replyAndClose(socket, 503, { reason: `server tunnel limit (${tunnels.max}) reached` });
    return;
  }
  // Agents at their stream limit open more connections: wait a moment for room before a 503.
  const opened = await agents.openStream({ waitMs: flags["agent-wait"] });
  if (opened.stream === undefined) {
    const reason =
      agents.size === 0
        ? "no agent is connected to the tunnel server"
        : `no agent can take a stream: ${opened.errors.map((err) => err.message).join("; ")}`;
    tunnels.refused("no_agent");
    log.warn("refused client {client}: {reason}", { client, reason });
    replyAndClose(socket, 503, { reason });
    return;
  }
  const { stream, agent } = opened;
  const started = performance.now();
  log.trace("client {client} -> agent {agent} stream {stream}", { client, agent: agent.peer, stream: stream.id });
  void tunnels.track(pipeBoth(socket, stream, { idleTimeoutMs: flags["tunnel-idle-timeout"] })).then((result) => {
    agents.roomMade();
    const fields = {
      client,
      agent: agent.peer,
      stream: stream.id,
      up: result.sent,
      down: result.received,
      ms: Math.round(performance.now() - started),
    };
    if (result.error) log.debug("tunnel {client} ended with error: {error}", { ...fields, error: result.error });
    else log.debug("tunnel {client} closed", fields);
  });
}

const frontendTls = flags["tcp-cert-file"]
  ? { certFile: flags["tcp-cert-file"], keyFile: flags["tcp-cert-key"], clientCaFile: flags["tcp-client-ca-file"] || undefined }
  : undefined;
const listeners: Array<{ server: Server; bound: string }> = [];
try {
  listeners.push(await listenTcp(flags["listen-tcp"], frontendTls, onClient));
  if (flags["listen-uds"]) listeners.push(await listenUnix(flags["listen-uds"], onClient));
} catch (err) {
  exitWithError("quic-server", err);
}

if (frontendTls) {
  // The TLS frontend's certificates rotate like the QUIC ones: new client handshakes use them.
  const paths = [frontendTls.certFile, frontendTls.keyFile, ...(frontendTls.clientCaFile ? [frontendTls.clientCaFile] : [])];
  watchFiles(paths, {
    load: () => readFrontendTls(frontendTls),
    onChange: (context) => {
      (listeners[0].server as TlsServer).setSecureContext(context);
      log.info("TCP TLS certificate files changed; new client handshakes use them");
    },
    onError: (err) => log.error("TCP TLS certificate reload failed, keeping the previous certificates: {error}", { error: err }),
  });
}

// Admin endpoint: ready once an agent is connected.
const admin = flags["admin-addr"];
if (admin) {
  const { port } = await startAdmin(admin, { registry, notReady: () => (agents.size === 0 ? "no agent connected" : undefined) }).catch(
    (err) => exitWithError("quic-server", err),
  );
  log.info("admin endpoint on {address}", { address: `${admin.host}:${port}` });
}
log.info("server started, tcp={tcp} quic={quic}", {
  tcp: listeners[0].bound,
  quic: formatHostPort(quic.address()),
  tls: Boolean(frontendTls),
  uds: flags["listen-uds"] || undefined,
});

// Shutdown: stop accepting clients, let open tunnels finish, then close the agents' connections.
onShutdown(log, {
  graceMs: flags["shutdown-grace"],
  drain: async (graceMs) => {
    for (const { server } of listeners) server.close();
    if (!(await tunnels.whenIdle(graceMs))) log.warn("closing {count} tunnels still open after the grace period", { count: tunnels.count });
    await quic.close();
  },
});

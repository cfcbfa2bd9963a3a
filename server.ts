/**
 * quic-server: accepts HTTP CONNECT clients (kube-apiserver, curl) on TCP, TLS or a Unix socket and
 * agents on QUIC with mutual TLS, and carries every client connection over a new QUIC stream to the
 * next agent, round-robin. It reads a client's request head (within --header-timeout) before it
 * opens the stream; the agent answers the CONNECT. With passthrough agents it reads nothing.
 *
 * Usage: bun run server.ts --cert-file tls.crt --cert-key tls.key --client-ca-file ca.crt
 *
 * @module
 */
import { randomUUID } from "node:crypto";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { HandshakeAdmission } from "./lib/admission.ts";
import { formatHostPort, type HostPort } from "./lib/hostport.ts";
import { ID_PATTERN } from "./lib/identifiers.ts";
import { startAdmin } from "./lib/ops/admin.ts";
import { type CertificateWatch, loadPemSet, loadTls, tlsMaterial, watchCertificates } from "./lib/ops/certificates.ts";
import {
  COMMON_FLAGS,
  exitWithError,
  parseCommandLine,
  retryWarnings,
  TRANSPORT_FLAGS,
  transportOptions,
  transportWarnings,
  tunnelTimeouts,
} from "./lib/ops/cli.ts";
import { setupLogging } from "./lib/ops/log.ts";
import { Counter, Histogram, Registry } from "./lib/ops/metrics.ts";
import { logStrayErrors, onReload, onShutdown } from "./lib/ops/process.ts";
import { registerQuicMetrics, registerQuicServerMetrics, reportRefusedInitials } from "./lib/ops/quic-metrics.ts";
import { STREAM_OPENED, STREAM_OPENED_FEATURE } from "./lib/protocol.ts";
import { Agents } from "./lib/server/agents.ts";
import { acceptingAddresses, type Frontend, type HandshakeOptions, listenTcp, listenUnix } from "./lib/server/frontends.ts";
import { parseStrategies, type Strategy } from "./lib/server/strategies.ts";
import { type EngineChoice, loadEngine, type QuicEngine, type QuicServer, settled } from "./lib/transport/mod.ts";
import { tcpEngine, tcpUnsupported } from "./lib/transport/tcp/mod.ts";
import { firstBytes, HttpError, parseConnectTarget, readRequestHead } from "./lib/tunnel/connect.ts";
import { abort } from "./lib/tunnel/pipe.ts";
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
    "listen-agent-tcp": {
      kind: "hostport",
      value: "host:port",
      help: "Also accept agents over the TCP transport (TLS on TCP, the same certificates and --agent-subject), for networks that block UDP or allow TCP only through a proxy; agents reach it with --transport tcp or auto. Off unless given; the same port as --listen-quic is the agents' default.",
    },
    "cert-file": { kind: "string", value: "path", required: true, help: "PEM server certificate presented to agents." },
    "cert-key": { kind: "string", value: "path", required: true, help: "PEM private key of the server certificate." },
    "client-ca-file": {
      kind: "string",
      value: "path",
      required: true,
      help: "PEM CA bundle that verifies agents' client certificates.",
    },
    "server-id": {
      kind: "string",
      value: "id",
      help: "This server's name among its replicas (letters, digits, . _ -), told to each agent, which holds one connection per server id. Default: random for each process.",
    },
    "server-count": {
      positive: true,
      kind: "int",
      value: "n",
      default: "1",
      help: "How many server replicas share the agents' --server address (behind one load balancer or DNS name): each agent keeps dialing until it holds a connection to this many distinct server ids.",
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
    "header-timeout": {
      positive: true,
      kind: "duration",
      value: "dur",
      default: "10s",
      help: "Time a client has to send its complete CONNECT request head (408 beyond); no agent stream is opened before. On the TLS listener the handshake gets as long again first (the connection is closed beyond it).",
    },
    "max-header-bytes": {
      positive: true,
      kind: "size",
      value: "size",
      default: "16KiB",
      help: "Largest CONNECT request head accepted (431 beyond).",
    },
    passthrough: {
      kind: "bool",
      default: "false",
      help: "Clients speak to passthrough agents (the reference's client-tcp): forward their bytes at once, read no head. Our agent-tcp says so by itself.",
    },
    "proxy-strategies": {
      kind: "string",
      value: "list",
      default: "default",
      help: "How the agent for a CONNECT is picked, comma-separated, tried in order until one finds a connected agent: destHost (an agent whose --agent-identifiers name the target's host, IP or a CIDR holding it), defaultRoute (one that announced default-route=true), default (any). Round-robin among those; 503 with the reason when none finds one.",
    },
    "agent-wait": {
      kind: "duration",
      value: "dur",
      default: "5s",
      help: "How long a client waits for an agent with a free stream (agents at their limit open more connections) before 503.",
    },
    "agent-answer-timeout": {
      positive: true,
      kind: "duration",
      value: "dur",
      default: "15s",
      help: "How long the server waits for an agent's answer to a CONNECT (its own dial takes up to its --dial-timeout) before it resets the stream and answers 504; an agent that missed it takes new tunnels only when no other agent can, for a minute.",
    },
    "quic-retry": {
      kind: "bool",
      default: "true",
      help: "Validate agent addresses with a stateless QUIC Retry before keeping state. The node-quic engine cannot send Retry: it warns at the default and refuses --quic-retry or --quic-retry=true; --quic-retry=false turns Retry off on every engine.",
    },
    ...TRANSPORT_FLAGS,
    ...COMMON_FLAGS,
  },
);
const log = setupLogging("server", { verbosity: flags.v, format: flags["log-format"], ignored: flags.ignored });
logStrayErrors(log);
// SIGHUP reloads the certificate files (as their change does) and never ends the role.
const certificateWatches: CertificateWatch[] = [];
onReload(log, certificateWatches);

// Certificates: the QUIC pair with the CA for agents, and the TLS frontend's pair if any.
const registry = new Registry();
const tlsFiles = {
  ca: { flag: "client-ca-file", path: flags["client-ca-file"] },
  cert: { flag: "cert-file", path: flags["cert-file"] },
  key: { flag: "cert-key", path: flags["cert-key"] },
};
const frontendFiles = flags["tcp-cert-file"]
  ? {
      cert: { flag: "tcp-cert-file", path: flags["tcp-cert-file"] },
      key: { flag: "tcp-cert-key", path: flags["tcp-cert-key"] },
      ca: flags["tcp-client-ca-file"] ? { flag: "tcp-client-ca-file", path: flags["tcp-client-ca-file"] } : undefined,
    }
  : undefined;
let tls: ReturnType<typeof loadTls>;
let transport: ReturnType<typeof transportOptions>;
let engine: QuicEngine;
let warnings: string[];
let strategies: Strategy[];
try {
  strategies = parseStrategies(flags["proxy-strategies"]);
  if (Boolean(flags["tcp-cert-file"]) !== Boolean(flags["tcp-cert-key"])) throw new Error("--tcp-cert-file and --tcp-cert-key go together");
  if (flags["server-id"] && !ID_PATTERN.test(flags["server-id"]))
    throw new Error(`--server-id ${JSON.stringify(flags["server-id"])}: use 1-64 letters, digits, '.', '_' or '-'`);
  if (flags["listen-agent-tcp"] && tcpUnsupported) throw new Error(`--listen-agent-tcp: ${tcpUnsupported}`);
  if (flags["tcp-client-ca-file"] && !flags["tcp-cert-file"])
    throw new Error("--tcp-client-ca-file needs --tcp-cert-file and --tcp-cert-key");
  tls = loadTls(tlsFiles);
  if (frontendFiles) loadPemSet(frontendFiles);
  transport = transportOptions(flags);
  engine = await loadEngine(flags["quic-engine"] as EngineChoice);
  warnings = [...transportWarnings(engine, flags), ...retryWarnings(engine, flags)];
} catch (err) {
  exitWithError("quic-server", err);
}
for (const warning of warnings) log.warn("{warning}", { warning });

// Agents: those the CA signed (and --agent-subject names) take tunnels once they said what kind
// they are; each learns the client listeners so that it can refuse loops back into them.
const frontends: Frontend[] = [];
const listeners = () => frontends.flatMap((frontend) => (frontend.address ? acceptingAddresses(frontend.address) : []));
const identity = { id: flags["server-id"] || randomUUID(), count: flags["server-count"] };
const agents = new Agents({
  log,
  registry,
  subjects: flags["agent-subject"],
  passthrough: flags.passthrough,
  listeners,
  identity,
  strategies,
});

// Per client: a slot, the request head (unless agents are passthrough), a stream on the next agent
// with room, then both ways until both sides are done.
const tunnels = new Tunnels(registry, { role: "server", max: flags["max-tunnels"], log, maxBuffered: flags["max-buffered"] });
const setupSeconds = new Histogram(
  registry,
  "quic_tunnel_connect_setup_seconds",
  "Time from a client's accept to its agent's answer (tunnels that got one).",
  [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15],
);
// Slots are taken from accept: one address that opens connections and sends nothing could take
// them all for --header-timeout. Once many clients are still sending their request head (half the
// slots, at most 1,024), one address may have only a quarter of that many, so a burst of one
// client's tunnels passes while nobody else waits, and a stranger leaves slots to the others.
const headsBusyAt = Math.min(1024, flags["max-tunnels"] > 0 ? Math.ceil(flags["max-tunnels"] / 2) : 1024);
const PENDING_HEADS_PER_ADDRESS = Math.max(1, Math.floor(headsBusyAt / 4));
const pendingHeads = new HandshakeAdmission(
  { maxHandshakes: Number.POSITIVE_INFINITY, maxHandshakesPerAddress: PENDING_HEADS_PER_ADDRESS },
  { busyAt: headsBusyAt },
);
/** The host of a CONNECT target, for --proxy-strategies; undefined when malformed (the agent answers 400). */
function connectHost(target: string): string | undefined {
  try {
    return parseConnectTarget(target).host;
  } catch {
    return undefined;
  }
}

async function serveClient(socket: Duplex & Partial<Pick<Socket, "remoteAddress" | "remotePort">>): Promise<void> {
  const client = socket.remoteAddress ? formatHostPort({ host: socket.remoteAddress, port: socket.remotePort ?? 0 }) : "unix";
  const passthrough = agents.passthrough;
  const tunnel = tunnels.open(socket, { http: !passthrough, id: client });
  if (!tunnel) return;
  let first = Buffer.alloc(0);
  let host: string | undefined;
  if (!passthrough) {
    const headDone = pendingHeads.admit(socket.remoteAddress ?? "unix");
    if (typeof headDone === "string") {
      const reason = `too many connections from ${socket.remoteAddress ?? "this socket"} are still sending their request head (${pendingHeads.count} clients are; at most ${PENDING_HEADS_PER_ADDRESS} from one address then)`;
      tunnel.refuse("over_limit", 503, reason);
      return;
    }
    try {
      const { head, raw, rest } = await readRequestHead(socket, {
        maxBytes: flags["max-header-bytes"],
        timeoutMs: flags["header-timeout"],
      });
      first = Buffer.concat([raw, rest]);
      host = connectHost(head.target);
    } catch (err) {
      if (err instanceof HttpError) tunnel.refuse(err.status === 408 ? "timeout" : "bad_request", err.status, err.message);
      else tunnel.refuse("aborted", 400, (err as Error).message);
      return;
    } finally {
      headDone();
    }
  }
  const opened = await agents.openStream({ waitMs: flags["agent-wait"], host });
  if (opened.stream === undefined) {
    tunnel.refuse("no_agent", 503, opened.reason);
    return;
  }
  const { stream, agent, strategy } = opened;
  tunnel.note({ agent: agent.peer, stream: stream.id, strategy });
  // Our agent-tcp learns of the stream now, not when the client first speaks: its upstream may speak first.
  if (agents.asked(agent, STREAM_OPENED_FEATURE)) stream.write(STREAM_OPENED);
  if (first.length > 0) stream.write(first);
  const answer = passthrough ? "answered" : await firstBytes(stream, flags["agent-answer-timeout"]);
  if (answer === "timeout") {
    abort(stream);
    agents.unanswered(agent, flags["agent-answer-timeout"]);
    tunnel.refuse("timeout", 504, `agent ${agent.peer} did not answer within ${flags["agent-answer-timeout"]} ms`);
    return;
  }
  if (answer === "ended") {
    // The agent's own doing (a reset under its --max-buffered, a shutdown), not a mute agent's.
    abort(stream);
    tunnel.refuse("error", 502, `agent ${agent.peer} ended the tunnel before answering`);
    return;
  }
  if (!passthrough) setupSeconds.observe(tunnel.ageSeconds);
  await tunnel.carry(stream, tunnelTimeouts(flags));
  agents.roomMade();
}
const onClient = (socket: Duplex) =>
  void serveClient(socket).catch((err) => log.error("client connection failed unexpectedly: {error}", { error: err }));

// A TLS client gets --header-timeout for its handshake (and as much again for its head): one that
// sends nothing, or part of a ClientHello, is closed then, counted, and named at debug level.
const handshakeFailures = new Counter(
  registry,
  "quic_tunnel_client_handshake_failures_total",
  "TLS handshakes of clients on the TCP listener that failed (error) or did not finish within --header-timeout (timeout).",
);
for (const reason of ["timeout", "error"]) handshakeFailures.inc({ reason }, 0);
const clientHandshakes: HandshakeOptions = {
  timeoutMs: flags["header-timeout"],
  onFailure: ({ reason, error, client }) => {
    handshakeFailures.inc({ reason });
    log.debug("TLS client {client} closed: {error}", { client, error, reason });
  },
};

// Client listeners first, then QUIC: an agent's hello is answered with the listeners it must not dial.
try {
  frontends.push(await listenTcp(flags["listen-tcp"], frontendFiles, onClient, clientHandshakes));
  if (flags["listen-uds"]) frontends.push(await listenUnix(flags["listen-uds"], onClient));
} catch (err) {
  exitWithError("quic-server", err);
}
for (const frontend of frontends) {
  // Accept errors (a full descriptor table) after listening: the listener stays, the client is gone.
  frontend.server.on("error", (err) => log.error("client listener {address}: {error}", { address: frontend.bound, error: err }));
}
if (frontendFiles) {
  // The TLS frontend's certificates rotate like the QUIC ones: new client handshakes use them.
  certificateWatches.push(watchCertificates(frontendFiles, { log, registry, onChange: (pems) => frontends[0].setTls?.(pems) }));
}

// Transport: agents connect over QUIC with mutual TLS, and over TLS on TCP if asked.
const acceptAgents = (listener: QuicServer, kind: string) => {
  listener.on("connection", (agent) => agents.admit(agent));
  listener.on("rejected", (peer, error) => agents.rejected(peer, error?.message ?? "handshake failed"));
  listener.on("error", (err) => log.error("{kind} agent listener error: {error}", { kind, error: err }));
  return listener;
};
const quic = acceptAgents(
  await engine
    .listen({ ...flags["listen-quic"], tls, transport, retry: flags["quic-retry"] })
    .catch((err) => exitWithError("quic-server", err)),
  "QUIC",
);
const agentTcpAddress = flags["listen-agent-tcp"] as HostPort | undefined;
const agentTcp =
  agentTcpAddress &&
  acceptAgents(await tcpEngine.listen({ ...agentTcpAddress, tls, transport }).catch((err) => exitWithError("quic-server", err)), "TCP");
const agentListeners = agentTcp ? [quic, agentTcp] : [quic];
registerQuicMetrics(registry, () => agents.connections);
registerQuicServerMetrics(registry, quic);
reportRefusedInitials(quic, log);
certificateWatches.push(
  watchCertificates(tlsFiles, {
    log,
    registry,
    onChange: (pems) => {
      for (const listener of agentListeners) listener.setTls(tlsMaterial(pems));
    },
  }),
);

// Admin endpoint: ready once an agent is connected.
const admin = flags["admin-addr"];
if (admin) {
  await startAdmin(admin, { registry, log, notReady: () => (agents.size === 0 ? "no agent connected" : undefined) }).catch((err) =>
    exitWithError("quic-server", err),
  );
}
log.info(agentTcp ? "server started, tcp={tcp} quic={quic} agent_tcp={agent_tcp}" : "server started, tcp={tcp} quic={quic}", {
  tcp: frontends[0].bound,
  quic: formatHostPort(quic.address()),
  agent_tcp: agentTcp ? formatHostPort(agentTcp.address()) : undefined,
  engine: engine.name,
  server_id: identity.id,
  server_count: identity.count,
  tls: Boolean(frontendFiles),
  uds: flags["listen-uds"] || undefined,
});

// Shutdown: stop accepting clients, let open tunnels finish, then close the agents' connections.
onShutdown(log, {
  graceMs: flags["shutdown-grace"],
  drain: async (graceMs) => {
    const deadline = Date.now() + graceMs;
    for (const { server } of frontends) server.close();
    if (await tunnels.whenIdle(graceMs)) await settled(agents.connections, { timeoutMs: deadline - Date.now() });
    else log.warn("closing {count} tunnels still open after the grace period", { count: tunnels.count });
    await Promise.all(agentListeners.map((listener) => listener.close()));
    log.info("server stopped");
  },
});

/**
 * quic-agent: dials the tunnel server over QUIC with a client certificate and serves every stream
 * the server opens as an HTTP CONNECT proxy: read the request head, decide on the address the
 * target is dialed at (`--allow`; never back into the server or this host: 508), dial it, answer
 * `200 OK`, then pipe both ways. Reconnects forever with backoff.
 *
 * Usage: bun run agent.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key
 *
 * @module
 */
import { connectionOptions, drainAgent, registerConnectionMetrics, runAgent } from "./lib/agent/connections.ts";
import { loopReason, type ServerInfo } from "./lib/agent/loop-guard.ts";
import { startAdmin } from "./lib/ops/admin.ts";
import { type CertificateWatch, loadTls, tlsMaterial, watchCertificates } from "./lib/ops/certificates.ts";
import { AGENT_FLAGS, checkAgentFlags, exitWithError, parseCommandLine, transportWarnings, tunnelTimeouts } from "./lib/ops/cli.ts";
import { setupLogging } from "./lib/ops/log.ts";
import { Histogram, Registry } from "./lib/ops/metrics.ts";
import { logStrayErrors, onReload, onShutdown } from "./lib/ops/process.ts";
import { type EngineChoice, loadEngine, type QuicEngine, type QuicStream } from "./lib/transport/mod.ts";
import { AllowList } from "./lib/tunnel/allow.ts";
import { HttpError, parseConnectTarget, readRequestHead, statusResponse } from "./lib/tunnel/connect.ts";
import { dial } from "./lib/tunnel/dial.ts";
import { Tunnels } from "./lib/tunnel/slots.ts";

// Flags: the reference's, then ours.
const flags = parseCommandLine(
  {
    name: "quic-agent",
    summary: "Reverse HTTP CONNECT tunnel agent: dials the server over QUIC and serves CONNECT requests inside this network.",
  },
  {
    ...AGENT_FLAGS,
    allow: {
      kind: "list",
      value: "rule",
      help: "Allowed targets, repeatable: *, name, *.domain, IP or CIDR ([v6/len]), then :port, :p1,p2 or :lo-hi. None: any target. IP rules match the address dialed, in its own family. The unspecified address (0.0.0.0, ::), which dials this host, always gets 508; so do the server's own client listeners, at any address of its host, when the server is this program (it tells its agents); the Go reference's server cannot, so exclude its listeners here.",
    },
    "max-header-bytes": {
      positive: true,
      kind: "size",
      value: "size",
      default: "16KiB",
      help: "Largest CONNECT request head accepted (431 beyond).",
    },
    "header-timeout": {
      positive: true,
      kind: "duration",
      value: "dur",
      default: "10s",
      help: "Time allowed for a CONNECT request head to arrive (408 beyond).",
    },
  },
);
const log = setupLogging("agent", { verbosity: flags.v, format: flags["log-format"], ignored: flags.ignored });
logStrayErrors(log);
// SIGHUP reloads the certificate files (as their change does) and never ends the role.
const certificateWatches: CertificateWatch[] = [];
onReload(log, certificateWatches);

// Certificates, policy and transport. Loops are refused (508): the unspecified address always,
// the server's listeners where it says which they are (ours does, the reference's cannot).
const registry = new Registry();
const tlsFiles = {
  ca: { flag: "ca-file", path: flags["ca-file"] },
  cert: { flag: "cert-file", path: flags["cert-file"] },
  key: { flag: "cert-key", path: flags["cert-key"] },
};
let tls: ReturnType<typeof loadTls>;
let allowList: AllowList;
let engine: QuicEngine;
let warnings: string[];
let connecting: ReturnType<typeof connectionOptions>;
try {
  tls = loadTls(tlsFiles);
  allowList = new AllowList(flags.allow);
  checkAgentFlags(flags);
  engine = await loadEngine(flags["quic-engine"] as EngineChoice);
  warnings = transportWarnings(engine, flags);
  connecting = connectionOptions(flags, { kind: "connect", engine, tls: () => tls, log });
} catch (err) {
  exitWithError("quic-agent", err);
}
for (const warning of warnings) log.warn("{warning}", { warning });
if (allowList.allowsAll) log.warn("no --allow rules: any host:port this agent can reach is reachable through the tunnel");
// Rotated certificates apply from the next connection; the open ones keep working.
certificateWatches.push(watchCertificates(tlsFiles, { log, registry, onChange: (pems) => (tls = tlsMaterial(pems)) }));

const tunnels = new Tunnels(registry, { role: "agent", max: flags["max-tunnels"], log, maxBuffered: flags["max-buffered"] });
const dialSeconds = new Histogram(
  registry,
  "quic_tunnel_dial_duration_seconds",
  "Time to dial a target (successful dials).",
  [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
);
let draining = false;
const agent = runAgent(
  connecting,
  (stream, server) =>
    void serveConnect(stream, server).catch((err) =>
      log.error("stream {stream} failed unexpectedly: {error}", { stream: stream.id, error: err }),
    ),
);
registerConnectionMetrics(registry, agent);

// Per stream: a slot, one CONNECT request, the address to dial, then a tunnel to it.
async function serveConnect(stream: QuicStream, server: ServerInfo): Promise<void> {
  const tunnel = tunnels.open(stream, { http: true, id: `stream ${stream.id}` });
  if (!tunnel) return;
  if (draining) return tunnel.refuse("draining", 503, "the agent is shutting down");
  let request: Awaited<ReturnType<typeof readRequestHead>>;
  try {
    request = await readRequestHead(stream, { maxBytes: flags["max-header-bytes"], timeoutMs: flags["header-timeout"] });
  } catch (err) {
    if (err instanceof HttpError) return tunnel.refuse(err.status === 408 ? "timeout" : "bad_request", err.status, err.message);
    return tunnel.refuse("aborted", 400, (err as Error).message);
  }
  const { head, rest } = request;
  tunnel.note({ target: head.target });
  if (head.method !== "CONNECT") return tunnel.refuse("bad_request", 405, "this proxy only supports CONNECT passthrough");
  const started = performance.now();
  try {
    const target = parseConnectTarget(head.target);
    const verdict = await allowList.check(target).catch((err: NodeJS.ErrnoException) => {
      throw new HttpError(502, `cannot resolve ${target.host}: ${err.code ?? err.message}`);
    });
    if (!verdict.allowed) return tunnel.refuse("denied", 403, verdict.reason);
    // A stream can overtake the server's answer to the hello, which names its listeners.
    await server.announced;
    const loop = loopReason(verdict.address, target, server);
    if (loop) return tunnel.refuse("loop", 508, loop);
    tunnel.note({ address: verdict.address.dial });
    const socket = await dial({ host: verdict.address.dial, port: target.port }, { timeoutMs: flags["dial-timeout"] });
    dialSeconds.observe((performance.now() - started) / 1000);
    stream.write(statusResponse(200));
    if (rest.length > 0) socket.write(rest);
    await tunnel.carry(socket, { status: 200, ...tunnelTimeouts(flags) });
  } catch (err) {
    const status = err instanceof HttpError ? err.status : 502;
    tunnel.refuse(status === 400 ? "bad_request" : "dial_failed", status, (err as Error).message);
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
  }).catch((err) => exitWithError("quic-agent", err));
}

// Shutdown: tell the server, let open tunnels finish, then close.
onShutdown(log, {
  graceMs: flags["shutdown-grace"],
  drain: async (graceMs) => {
    draining = true;
    await drainAgent(agent, tunnels, { graceMs, log });
  },
});

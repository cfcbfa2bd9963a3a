/**
 * quic-agent: dials the tunnel server over QUIC with a client certificate and serves every stream
 * the server opens as an HTTP CONNECT proxy: read the request head, check the target against
 * `--allow`, dial it, answer `200 OK`, then pipe both ways. Reconnects forever with backoff.
 *
 * Usage: bun run agent.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key
 *
 * @module
 */
import { type AgentRole, startAgentRole } from "./lib/agent/role.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { AGENT_FLAGS, exitWithError, parseCommandLine } from "./lib/ops/cli.ts";
import { setupLogging } from "./lib/ops/log.ts";
import { Counter, Histogram, Registry } from "./lib/ops/metrics.ts";
import type { QuicStream } from "./lib/quic/mod.ts";
import { AllowList } from "./lib/tunnel/allow.ts";
import { HttpError, parseConnectTarget, readRequestHead, replyAndClose, statusResponse } from "./lib/tunnel/connect.ts";
import { dial } from "./lib/tunnel/dial.ts";
import { pipeBoth } from "./lib/tunnel/pipe.ts";

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
      help: "Allowed targets, repeatable: *, name, *.domain, IP or CIDR ([v6/len]), then :port, :p1,p2 or :lo-hi. None: any target.",
    },
    "max-header-bytes": { kind: "size", value: "size", default: "16KiB", help: "Largest CONNECT request head accepted (431 beyond)." },
    "header-timeout": {
      kind: "duration",
      value: "dur",
      default: "10s",
      help: "Time allowed for a CONNECT request head to arrive (408 beyond).",
    },
  },
);
const log = setupLogging("agent", { verbosity: flags.v, format: flags["log-format"] });
let allowList: AllowList;
try {
  allowList = new AllowList(flags.allow);
} catch (err) {
  exitWithError("quic-agent", err);
}
if (allowList.allowsAll) log.warn("no --allow rules: any host:port this agent can reach is reachable through the tunnel");

const registry = new Registry();
const responses = new Counter(registry, "quic_tunnel_connect_responses_total", "CONNECT answers, by HTTP status code.");
const dialSeconds = new Histogram(
  registry,
  "quic_tunnel_dial_duration_seconds",
  "Time to dial a target (successful dials).",
  [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
);

// Certificates, transport, admin endpoint and shutdown: shared with agent-tcp.ts.
await startAgentRole("quic-agent", { flags, log, registry, serve: (stream, role) => void serveConnect(stream, role) });

// Per stream: one CONNECT request, then a tunnel to its target.
async function serveConnect(stream: QuicStream, { tunnels }: AgentRole): Promise<void> {
  stream.on("error", () => {}); // reported where it matters: reading the head, dialing, piping
  const refuse = (status: number, reason: string, outcome: string) => {
    responses.inc({ code: status });
    tunnels.refused(outcome);
    replyAndClose(stream, status, { reason });
  };
  if (tunnels.full) {
    log.warn("stream {stream}: refused, {max} tunnels open", { stream: stream.id, max: tunnels.max, status: 503 });
    return refuse(503, `agent tunnel limit (${tunnels.max}) reached`, "over_limit");
  }
  let request: Awaited<ReturnType<typeof readRequestHead>>;
  try {
    request = await readRequestHead(stream, { maxBytes: flags["max-header-bytes"], timeoutMs: flags["header-timeout"] });
  } catch (err) {
    if (err instanceof HttpError) {
      log.warn("stream {stream}: bad request: {reason}", { stream: stream.id, status: err.status, reason: err.message });
      return refuse(err.status, err.message, "bad_request");
    }
    log.debug("stream {stream}: {reason}", { stream: stream.id, reason: (err as Error).message });
    stream.destroy();
    return;
  }
  const { head, rest } = request;
  if (head.method !== "CONNECT") {
    log.warn("stream {stream}: method {method} refused", { stream: stream.id, method: head.method, status: 405 });
    return refuse(405, "this proxy only supports CONNECT passthrough", "bad_request");
  }
  const started = performance.now();
  let target: ReturnType<typeof parseConnectTarget>;
  let socket: Awaited<ReturnType<typeof dial>>;
  try {
    target = parseConnectTarget(head.target);
    const verdict = await allowList.check(target).catch((err: NodeJS.ErrnoException) => {
      throw new HttpError(502, `cannot resolve ${target.host}: ${err.code ?? err.message}`);
    });
    if (!verdict.allowed) throw new HttpError(403, verdict.reason);
    socket = await dial({ host: verdict.address, port: target.port }, { timeoutMs: flags["dial-timeout"] });
  } catch (err) {
    const status = err instanceof HttpError ? err.status : 502;
    log.warn("stream {stream}: CONNECT {target} failed: {reason}", {
      stream: stream.id,
      target: head.target,
      status,
      reason: (err as Error).message,
    });
    return refuse(status, (err as Error).message, status === 403 ? "denied" : "dial_failed");
  }
  const dialMs = performance.now() - started;
  dialSeconds.observe(dialMs / 1000);
  responses.inc({ code: 200 });
  log.trace("stream {stream}: connected to {target}", { stream: stream.id, target: formatHostPort(target), dialMs: Math.round(dialMs) });
  stream.write(statusResponse(200));
  if (rest.length > 0) socket.write(rest);
  const result = await tunnels.track(pipeBoth(stream, socket, { idleTimeoutMs: flags["tunnel-idle-timeout"] }));
  log.debug("tunnel to {target} closed", {
    stream: stream.id,
    target: formatHostPort(target),
    up: result.sent,
    down: result.received,
    ms: Math.round(performance.now() - started),
    error: result.error,
  });
}

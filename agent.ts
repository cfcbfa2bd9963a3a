/**
 * quic-agent: dials the tunnel server over QUIC with a client certificate and serves every stream
 * the server opens as an HTTP CONNECT proxy: read the request head, dial the target, answer
 * `200 OK`, then pipe both ways. Reconnects forever with backoff.
 *
 * Usage: bun run agent.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key
 *
 * @module
 */
import { runAgent } from "./lib/agent-loop.ts";
import { AGENT_FLAGS, exitWithError, parseCommandLine, transportOptions } from "./lib/cli.ts";
import { HttpError, parseConnectTarget, readRequestHead, replyAndClose, statusResponse } from "./lib/connect.ts";
import { dial } from "./lib/dial.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { setupLogging } from "./lib/log.ts";
import { pipeBoth } from "./lib/pipe.ts";
import { loadTls } from "./lib/tls.ts";
import type { QuicStream } from "./lib/transport.ts";

// Flags: the reference's, then ours.
const flags = parseCommandLine(
  {
    name: "quic-agent",
    summary: "Reverse HTTP CONNECT tunnel agent: dials the server over QUIC and serves CONNECT requests inside this network.",
  },
  {
    ...AGENT_FLAGS,
    "max-header-bytes": { kind: "size", value: "size", default: "16KiB", help: "Largest CONNECT request head accepted (431 beyond)." },
    "header-timeout": {
      kind: "duration",
      value: "dur",
      default: "10s",
      help: "Time allowed for a CONNECT request head to arrive (408 beyond).",
    },
  },
);
const log = setupLogging("agent", { verbosity: flags.v });

// Certificates.
let tls: ReturnType<typeof loadTls>;
let transport: ReturnType<typeof transportOptions>;
try {
  tls = loadTls({
    ca: { flag: "ca-file", path: flags["ca-file"] },
    cert: { flag: "cert-file", path: flags["cert-file"] },
    key: { flag: "cert-key", path: flags["cert-key"] },
  });
  transport = transportOptions(flags);
} catch (err) {
  exitWithError("quic-agent", err);
}

// Transport: one QUIC connection to the server, kept up for as long as the process runs.
const agent = runAgent(
  {
    server: flags.server,
    serverName: flags["server-name"],
    tls,
    transport: { ...transport, keepAliveMs: flags["keep-alive"] },
    backoff: { minMs: flags["reconnect-min"], maxMs: flags["reconnect-max"] },
    log,
  },
  (stream) => void serveConnect(stream),
);

// Shutdown: close the connection with a clean code so the server stops routing to this agent.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    log.info("received {signal}, shutting down", { signal });
    agent.stop();
    void agent.done.then(() => setTimeout(() => process.exit(0), 50));
  });
}

// Per stream: one CONNECT request, then a tunnel to its target.
async function serveConnect(stream: QuicStream): Promise<void> {
  stream.on("error", () => {}); // reported where it matters: reading the head, dialing, piping
  let request: Awaited<ReturnType<typeof readRequestHead>>;
  try {
    request = await readRequestHead(stream, { maxBytes: flags["max-header-bytes"], timeoutMs: flags["header-timeout"] });
  } catch (err) {
    if (err instanceof HttpError) {
      log.warn("stream {stream}: bad request: {reason}", { stream: stream.id, status: err.status, reason: err.message });
      replyAndClose(stream, err.status, { reason: err.message });
    } else {
      log.debug("stream {stream}: {reason}", { stream: stream.id, reason: (err as Error).message });
      stream.destroy();
    }
    return;
  }
  const { head, rest } = request;
  if (head.method !== "CONNECT") {
    log.warn("stream {stream}: method {method} refused", { stream: stream.id, method: head.method, status: 405 });
    replyAndClose(stream, 405, { reason: "this proxy only supports CONNECT passthrough" });
    return;
  }
  const started = performance.now();
  let target: ReturnType<typeof parseConnectTarget>;
  let socket: Awaited<ReturnType<typeof dial>>;
  try {
    target = parseConnectTarget(head.target);
    socket = await dial(target, { timeoutMs: flags["dial-timeout"] });
  } catch (err) {
    const status = err instanceof HttpError ? err.status : 502;
    log.warn("stream {stream}: CONNECT {target} failed: {reason}", {
      stream: stream.id,
      target: head.target,
      status,
      reason: (err as Error).message,
    });
    replyAndClose(stream, status, { reason: (err as Error).message });
    return;
  }
  const dialMs = Math.round(performance.now() - started);
  log.trace("stream {stream}: connected to {target}", { stream: stream.id, target: formatHostPort(target), dialMs });
  stream.write(statusResponse(200));
  if (rest.length > 0) socket.write(rest);
  const result = await pipeBoth(stream, socket);
  log.debug("tunnel to {target} closed", {
    stream: stream.id,
    target: formatHostPort(target),
    up: result.sent,
    down: result.received,
    ms: Math.round(performance.now() - started),
    error: result.error,
  });
}

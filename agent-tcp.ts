/**
 * quic-agent-tcp: the passthrough agent. Dials the tunnel server over QUIC with a client
 * certificate and pipes every stream the server opens to one fixed `--upstream host:port`; no
 * CONNECT involved. Reconnects forever with backoff.
 *
 * Usage: bun run agent-tcp.ts --server host:8888 --ca-file ca.crt --cert-file client.crt --cert-key client.key --upstream 10.0.0.1:443
 *
 * @module
 */
import { runAgent } from "./lib/agent-loop.ts";
import { AGENT_FLAGS, exitWithError, parseCommandLine, transportOptions } from "./lib/cli.ts";
import { dial } from "./lib/dial.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { setupLogging } from "./lib/log.ts";
import { pipeBoth } from "./lib/pipe.ts";
import { loadTls } from "./lib/tls.ts";
import type { QuicStream } from "./lib/transport.ts";

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
const log = setupLogging("agent-tcp", { verbosity: flags.v });
const upstream = formatHostPort(flags.upstream);

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
  exitWithError("quic-agent-tcp", err);
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
  (stream) => void serveUpstream(stream),
);

// Shutdown: close the connection with a clean code so the server stops routing to this agent.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    log.info("received {signal}, shutting down", { signal });
    agent.stop();
    void agent.done.then(() => setTimeout(() => process.exit(0), 50));
  });
}

// Per stream: dial the upstream; if that fails, reset the stream so the client's connection ends.
async function serveUpstream(stream: QuicStream): Promise<void> {
  stream.on("error", () => {}); // reported by pipeBoth
  stream.pause();
  const started = performance.now();
  let socket: Awaited<ReturnType<typeof dial>>;
  try {
    socket = await dial(flags.upstream, { timeoutMs: flags["dial-timeout"] });
  } catch (err) {
    log.warn("stream {stream}: upstream {upstream} failed: {reason}", { stream: stream.id, upstream, reason: (err as Error).message });
    stream.destroy();
    return;
  }
  const result = await pipeBoth(stream, socket);
  log.debug("tunnel to {upstream} closed", {
    stream: stream.id,
    upstream,
    up: result.sent,
    down: result.received,
    ms: Math.round(performance.now() - started),
    error: result.error,
  });
}

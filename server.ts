/**
 * quic-server: accepts HTTP CONNECT clients (kube-apiserver, curl) on TCP and agents on QUIC with
 * mutual TLS, and carries every client connection over a new QUIC stream to the next agent,
 * round-robin. It does not parse what clients send; the agent answers the CONNECT.
 *
 * Usage: bun run server.ts --cert-file tls.crt --cert-key tls.key --client-ca-file ca.crt
 *
 * @module
 */
import net from "node:net";
import { AgentPool } from "./lib/agent-pool.ts";
import { COMMON_FLAGS, exitWithError, parseCommandLine, TRANSPORT_FLAGS, transportOptions } from "./lib/cli.ts";
import { replyAndClose } from "./lib/connect.ts";
import { formatHostPort } from "./lib/hostport.ts";
import { setupLogging } from "./lib/log.ts";
import { pipeBoth } from "./lib/pipe.ts";
import { loadTls } from "./lib/tls.ts";
import { listen, type QuicConnection } from "./lib/transport.ts";

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
    "quic-retry": { kind: "bool", default: "true", help: "Validate agent addresses with a stateless QUIC Retry before keeping state." },
    ...TRANSPORT_FLAGS,
    ...COMMON_FLAGS,
  },
);
const log = setupLogging("server", { verbosity: flags.v });

// Certificates.
let tls: ReturnType<typeof loadTls>;
let transport: ReturnType<typeof transportOptions>;
try {
  tls = loadTls({
    ca: { flag: "client-ca-file", path: flags["client-ca-file"] },
    cert: { flag: "cert-file", path: flags["cert-file"] },
    key: { flag: "cert-key", path: flags["cert-key"] },
  });
  transport = transportOptions(flags);
} catch (err) {
  exitWithError("quic-server", err);
}

// Transport: agents connect over QUIC and join the round-robin pool.
const agents = new AgentPool<QuicConnection>();
const quic = await listen({ ...flags["listen-quic"], tls, transport, retry: flags["quic-retry"] }).catch((err) =>
  exitWithError("quic-server", err),
);
quic.on("connection", (agent) => {
  agents.add(agent);
  log.info("agent {peer} connected", { peer: agent.peer, subject: agent.peerSubject, agents: agents.size });
  agent.once("close", (error) => {
    agents.remove(agent);
    log.info("agent {peer} disconnected: {reason}", { peer: agent.peer, reason: error?.message ?? "closed", agents: agents.size });
  });
});
quic.on("rejected", (connection, error) => {
  log.warn("rejected agent {peer}: {reason}", { peer: connection.peer, reason: error?.message ?? "handshake failed" });
});
quic.on("error", (err) => log.error("QUIC socket error: {error}", { error: err }));

// Per client: a new stream on the next agent, piped both ways until both sides are done.
const tcp = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
  const client = formatHostPort({ host: socket.remoteAddress ?? "?", port: socket.remotePort ?? 0 });
  const opened = agents.openStream();
  if (opened.stream === undefined) {
    const reason =
      agents.size === 0
        ? "no agent is connected to the tunnel server"
        : `no agent can take a stream: ${opened.errors.map((err) => err.message).join("; ")}`;
    log.warn("refused client {client}: {reason}", { client, reason });
    replyAndClose(socket, 503, { reason });
    return;
  }
  const { stream, agent } = opened;
  const started = performance.now();
  log.trace("client {client} -> agent {agent} stream {stream}", { client, agent: agent.peer, stream: stream.id });
  void pipeBoth(socket, stream).then((result) => {
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
});
tcp.on("error", (err) =>
  exitWithError("quic-server", new Error(`cannot listen for TCP on ${formatHostPort(flags["listen-tcp"])}: ${err.message}`)),
);
tcp.listen(flags["listen-tcp"].port, flags["listen-tcp"].host, () => {
  const address = tcp.address() as net.AddressInfo;
  log.info("server started, tcp={tcp} quic={quic}", {
    tcp: formatHostPort({ host: address.address, port: address.port }),
    quic: formatHostPort(quic.address()),
  });
});

// Shutdown: close agents' connections with a clean code so they reconnect elsewhere at once.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    log.info("received {signal}, shutting down", { signal });
    tcp.close();
    void quic.close().then(() => process.exit(0));
  });
}

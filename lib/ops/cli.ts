/**
 * What the three role scripts share on their command lines: the transport and agent flag tables,
 * their conversion to transport options, and `--help`/`--version`/error handling.
 *
 * @module
 */
import pkg from "../../package.json" with { type: "json" };
import { ID_PATTERN, parseIdentifiers } from "../identifiers.ts";
import { ALPN, DEFAULT_TRANSPORT, SERVER_NAME, type TransportOptions } from "../protocol.ts";
import { ENGINE_CHOICES, type QuicEngine, udpBufferShortfall } from "../transport/mod.ts";
import { tcpUnsupported } from "../transport/tcp/mod.ts";
import type { PipeOptions } from "../tunnel/pipe.ts";
import { FlagError, type FlagSpec, type FlagValues, formatDuration, formatSize, helpText, type ParsedFlags, parseFlags } from "./flags.ts";

/** The release version, from package.json. */
export const VERSION: string = pkg.version;

/** Flags every role has. */
export const COMMON_FLAGS = {
  "max-tunnels": { kind: "int", value: "N", default: "10000", help: "Tunnels open at once; more are answered 503 (0: no limit)." },
  "max-buffered": {
    kind: "size",
    value: "size",
    default: "64MiB",
    help: "Bytes this process may hold for clients and targets that do not read what their tunnel brings (0: no limit). Flow control holds each sender back; past this total, or past half of it for one tunnel, the tunnel holding the most is ended (outcome over_budget), and what such tunnels held is given back to the system. With node-quic, whose streams take data whatever the reader does, this is what bounds memory.",
  },
  "tunnel-idle-timeout": {
    kind: "duration",
    value: "dur",
    default: "0",
    help: "Close a tunnel that carried no byte either way for this long (0: never).",
  },
  "half-close-timeout": {
    kind: "duration",
    value: "dur",
    default: "10s",
    help: "Once one side of a tunnel has closed, close the other if no byte moves for this long (0: never). Ends tunnels whose far end vanished, and chains of tunnels into the server itself.",
  },
  "admin-addr": {
    kind: "hostport",
    value: "host:port",
    default: "",
    help: "Serve /healthz, /readyz and /metrics here (off unless set; keep it on loopback or a pod IP: it has no authentication). Metrics are rendered at most once a second; at most 100 requests a second are answered.",
  },
  "shutdown-grace": {
    kind: "duration",
    value: "dur",
    default: "30s",
    help: "On SIGTERM/SIGINT, let open tunnels finish for this long before closing them. SIGHUP ends nothing: it reloads the certificate files.",
  },
  "log-format": { kind: "string", value: "text|json", choices: ["text", "json"], default: "text", help: "Log line format on stderr." },
  v: {
    kind: "int",
    value: "N",
    default: "0",
    help: "Log verbosity, klog style: 0-1 lifecycle, 2-3 one line per tunnel, 4 per-stream detail.",
  },
} satisfies Record<string, FlagSpec>;

/** QUIC tunables the reference hard-codes; the defaults match it where it has a value. */
export const TRANSPORT_FLAGS = {
  "quic-engine": {
    kind: "string",
    value: "name",
    choices: ENGINE_CHOICES,
    default: "auto",
    help: "QUIC implementation: quiche (the @matrixai/quic addon, linux-x64; holds a fast sender back for a slow reader, survives a NAT rebinding, sends Retry), node-quic (the runtime's built-in node:quic: Bun, any CPU; none of those three: see the README), or auto (quiche where its addon loads, else node-quic).",
  },
  alpn: {
    kind: "string",
    value: "proto",
    default: ALPN,
    help: "TLS ALPN protocol (the reference's value, keep it to interoperate).",
  },
  "idle-timeout": {
    positive: true,
    kind: "duration",
    value: "dur",
    default: formatDuration(DEFAULT_TRANSPORT.idleTimeoutMs),
    help: "Close a QUIC connection after this long without packets.",
  },
  "handshake-timeout": {
    positive: true,
    kind: "duration",
    value: "dur",
    default: formatDuration(DEFAULT_TRANSPORT.handshakeTimeoutMs),
    help: "Give up on a QUIC handshake after this long without a packet from the peer, and after five times this long in all (a long path keeps answering).",
  },
  "max-udp-payload": {
    kind: "int",
    value: "bytes",
    default: String(DEFAULT_TRANSPORT.maxUdpPayload),
    help: "Largest UDP payload sent; 1232 crosses a 1280-byte MTU path, 1452 suits a clean 1500-byte path.",
  },
  "stream-window": {
    positive: true,
    kind: "size",
    value: "size",
    default: formatSize(DEFAULT_TRANSPORT.streamWindow),
    help: "Initial per-stream receive window (the quiche engine grows it up to 16MiB).",
  },
  "connection-window": {
    positive: true,
    kind: "size",
    value: "size",
    default: formatSize(DEFAULT_TRANSPORT.connectionWindow),
    help: "Initial per-connection receive window (the quiche engine grows it up to 24MiB).",
  },
  "max-streams": {
    positive: true,
    kind: "int",
    value: "N",
    default: String(DEFAULT_TRANSPORT.maxStreams),
    help: "Concurrent streams the peer may open towards this side.",
  },
  cc: {
    kind: "string",
    value: "algo",
    choices: ["cubic", "reno", "bbr"],
    default: DEFAULT_TRANSPORT.congestionControl,
    help: "Congestion control: cubic, reno or bbr.",
  },
} satisfies Record<string, FlagSpec>;

/** Flags of both agents (agent.ts and agent-tcp.ts). */
export const AGENT_FLAGS = {
  server: {
    kind: "hostports",
    value: "host:port[,...]",
    default: "127.0.0.1:9999",
    help: "QUIC address of the tunnel server; several, comma-separated, or a DNS name with several addresses (looked up again every 30s): the agent holds a connection to each address (and to each server id the servers announce with --server-count).",
  },
  "ca-file": { kind: "string", value: "path", required: true, help: "PEM CA bundle that verifies the server certificate." },
  "cert-file": { kind: "string", value: "path", required: true, help: "PEM client certificate presented to the server." },
  "cert-key": { kind: "string", value: "path", required: true, help: "PEM private key of the client certificate." },
  "server-name": {
    kind: "string",
    value: "name",
    default: SERVER_NAME,
    help: "Name the server certificate must carry (also sent as SNI).",
  },
  "keep-alive": {
    kind: "duration",
    value: "dur",
    default: formatDuration(DEFAULT_TRANSPORT.keepAliveMs),
    help: "Send a keep-alive PING this often; 0 disables.",
  },
  "dial-timeout": { positive: true, kind: "duration", value: "dur", default: "10s", help: "Give up dialing a target after this long." },
  "reconnect-min": {
    positive: true,
    kind: "duration",
    value: "dur",
    default: "250ms",
    help: "First delay before reconnecting to the server.",
  },
  "reconnect-max": {
    positive: true,
    kind: "duration",
    value: "dur",
    default: "30s",
    help: "Largest delay between reconnect attempts (exponential, jittered).",
  },
  transport: {
    kind: "string",
    value: "name",
    choices: ["auto", "quic", "tcp"],
    default: "quic",
    help: "How to reach the server: quic (UDP, as the reference), tcp (TLS on TCP to --server-tcp, the same certificates; through --proxy if set), or auto (QUIC first; when its handshake fails, TCP at once; while on TCP, QUIC is tried again every --transport-probe and tunnels move back without being cut). tcp and auto need a server started with --listen-agent-tcp.",
  },
  "server-tcp": {
    kind: "hostport",
    value: "host:port",
    help: "TCP address of the server's --listen-agent-tcp, which every connection dials (a TCP load balancer). Default: each --server address's own host and port.",
  },
  proxy: {
    kind: "string",
    value: "url",
    help: "HTTP proxy for the TCP transport (http://[user:pass@]host:port, asked with CONNECT). Default: HTTPS_PROXY or https_proxy unless NO_PROXY names the server; QUIC never uses a proxy.",
  },
  "transport-probe": {
    positive: true,
    kind: "duration",
    value: "dur",
    default: "60s",
    help: "With --transport auto, how often an agent on TCP tries QUIC again (jittered by a fifth).",
  },
  "agent-id": {
    kind: "string",
    value: "id",
    help: "This agent's name in the server's log (letters, digits, . _ -; default: the host name), told to our server with --agent-identifiers.",
  },
  "agent-identifiers": {
    kind: "string",
    value: "list",
    help: "What this agent reaches, for the server's --proxy-strategies, in Konnectivity's syntax: host=NAME&ipv4=IP&ipv6=IP&cidr=NET/BITS&default-route=true (each key repeatable). Told to our server as the agent connects.",
  },
  ...TRANSPORT_FLAGS,
  ...COMMON_FLAGS,
} satisfies Record<string, FlagSpec>;

/** Checks what the agent flags say together (each flag alone is checked as it is parsed). */
export function checkAgentFlags(values: FlagValues<typeof AGENT_FLAGS>): void {
  transportOptions(values);
  if (values.transport !== "quic" && tcpUnsupported) throw new FlagError(`--transport ${values.transport}: ${tcpUnsupported}`);
  if (values.transport === "quic" && (values.proxy || values["server-tcp"])) {
    throw new FlagError(`--${values.proxy ? "proxy" : "server-tcp"} is for the TCP transport: give --transport tcp or --transport auto`);
  }
  if (values["agent-id"] && !ID_PATTERN.test(values["agent-id"])) {
    throw new FlagError(`--agent-id ${JSON.stringify(values["agent-id"])}: use 1-64 letters, digits, '.', '_' or '-'`);
  }
  try {
    parseIdentifiers(values["agent-identifiers"]);
  } catch (err) {
    throw new FlagError(`--agent-identifiers: ${(err as Error).message}`);
  }
  if (values["reconnect-max"] < values["reconnect-min"]) {
    throw new FlagError(
      `--reconnect-max must not be below --reconnect-min, got ${values["reconnect-max"]} ms < ${values["reconnect-min"]} ms`,
    );
  }
}

/** The pipe timeouts of a tunnel from {@link COMMON_FLAGS}. */
export function tunnelTimeouts(values: FlagValues<typeof COMMON_FLAGS>): PipeOptions {
  return { idleTimeoutMs: values["tunnel-idle-timeout"], halfCloseTimeoutMs: values["half-close-timeout"] };
}

/** Transport options from parsed {@link TRANSPORT_FLAGS}. */
export function transportOptions(values: FlagValues<typeof TRANSPORT_FLAGS>): Partial<TransportOptions> {
  if (values["max-udp-payload"] < 1200 || values["max-udp-payload"] > 1472) {
    throw new FlagError(`--max-udp-payload: must be between 1200 and 1472, got ${values["max-udp-payload"]}`);
  }
  return {
    alpn: values.alpn,
    idleTimeoutMs: values["idle-timeout"],
    handshakeTimeoutMs: values["handshake-timeout"],
    maxUdpPayload: values["max-udp-payload"],
    streamWindow: values["stream-window"],
    connectionWindow: values["connection-window"],
    maxStreams: values["max-streams"],
    congestionControl: values.cc as TransportOptions["congestionControl"],
  };
}

/** The flag that sets each transport option of {@link transportOptions}. */
const TRANSPORT_OPTION_FLAGS: Partial<Record<keyof TransportOptions, keyof typeof TRANSPORT_FLAGS>> = {
  idleTimeoutMs: "idle-timeout",
  handshakeTimeoutMs: "handshake-timeout",
  maxUdpPayload: "max-udp-payload",
  streamWindow: "stream-window",
  connectionWindow: "connection-window",
  maxStreams: "max-streams",
  congestionControl: "cc",
};

/**
 * What the transport will do otherwise than the flags ask, in words for the log: the chosen
 * engine's caveats about flags left at their defaults, and the kernel's cap on UDP buffers. Throws
 * a {@link FlagError} naming the flag when the user set one the engine cannot honour.
 */
export function transportWarnings(engine: QuicEngine, flags: ParsedFlags<typeof TRANSPORT_FLAGS>): string[] {
  const shortfall = udpBufferShortfall();
  const warnings = shortfall ? [shortfall] : [];
  for (const { option, reason } of engine.transportCaveats({ ...DEFAULT_TRANSPORT, ...transportOptions(flags) })) {
    const flag = TRANSPORT_OPTION_FLAGS[option];
    if (flag && flags.given.has(flag)) throw new FlagError(`--${flag}: ${reason}`);
    warnings.push(flag ? `${reason} (--${flag} is at its default)` : reason);
  }
  return warnings;
}

/**
 * What the server's `--quic-retry` will not do on `engine`, for the log: nothing when the engine
 * sends Retry or the flag is off. Throws a {@link FlagError} when the user asked for Retry by name
 * on an engine that cannot send one.
 */
export function retryWarnings(engine: QuicEngine, flags: { "quic-retry": boolean; given: ReadonlySet<string> }): string[] {
  if (engine.retryCaveat === undefined || !flags["quic-retry"]) return [];
  if (flags.given.has("quic-retry")) throw new FlagError(`--quic-retry: ${engine.retryCaveat}`);
  return [`${engine.retryCaveat} (--quic-retry is at its default; --quic-retry=false turns this warning off)`];
}

/**
 * Parses a role's command line. Prints help or version and exits 0 when asked; prints the error
 * and exits 2 on a bad command line, as Go's `flag` package does.
 */
export function parseCommandLine<T extends Record<string, FlagSpec>>(
  info: { name: string; summary: string },
  flags: T,
  argv: string[] = process.argv.slice(2),
): ParsedFlags<T> {
  try {
    const result = parseFlags(argv, flags);
    if (result === "help") {
      process.stdout.write(helpText({ ...info, version: VERSION }, flags));
      process.exit(0);
    }
    if (result === "version") {
      process.stdout.write(`${info.name} ${VERSION}\n`);
      process.exit(0);
    }
    return result;
  } catch (err) {
    if (!(err instanceof FlagError)) throw err;
    process.stderr.write(`${info.name}: ${err.message}\nRun '${info.name} --help' for the flags.\n`);
    process.exit(2);
  }
}

/** Prints a start-up failure (a file that cannot be read, an address in use) and exits 1. */
export function exitWithError(name: string, err: unknown): never {
  process.stderr.write(`${name}: ${(err as Error)?.message ?? err}\n`);
  process.exit(1);
}

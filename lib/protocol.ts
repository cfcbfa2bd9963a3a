/**
 * The wire facts shared with gardener/quic-reverse-http-tunnel and between our own roles: ALPN,
 * server name, QUIC error codes, the GOAWAY stream, and the transport defaults that flag defaults
 * are derived from. Change one of these and interoperability with the reference changes.
 *
 * @module
 */

/** TLS ALPN protocol the reference speaks. */
export const ALPN = "quic-echo-example";

/**
 * TLS ALPN of our TCP transport (HTTP/2 in reverse over TLS on TCP): distinct from the QUIC one, so
 * that neither side mistakes the other transport, or a plain HTTPS client, for its own.
 */
export const TCP_ALPN = "quic-tunnel-tcp/h2";

/** Name the agent verifies in the server certificate (and sends as SNI). */
export const SERVER_NAME = "quic-tunnel-server";

/** First bytes of a stream an agent opens to tell the server to stop routing new tunnels to it. */
export const GOAWAY = "GOAWAY\n";

/**
 * The feature a passthrough agent asks for with `FEATURES stream-opened` (lib/control.ts): our
 * server then writes {@link STREAM_OPENED} first on every stream it opens to that agent.
 */
export const STREAM_OPENED_FEATURE = "stream-opened";

/**
 * The bytes that make a new stream known to the agent. A QUIC stream its opener has written nothing
 * to does not exist for the peer, so the client of a protocol whose server speaks first (SMTP,
 * MySQL, FTP) would wait for ever behind a passthrough agent. The agent takes them off; a stream
 * that does not begin with them (a server that does not write them) is passed on whole.
 */
export const STREAM_OPENED = Buffer.from("\0QT-OPEN", "latin1");

/** Application error code in RESET_STREAM / STOP_SENDING when a tunnel is torn down. */
export const STREAM_CANCELLED = 0x10c;

/** Application error code of a connection closed because the agent's identity is not allowed. */
export const AGENT_NOT_ALLOWED = 0x101;

/** QUIC transport tunables. Durations are in milliseconds, sizes in bytes. */
export interface TransportOptions {
  /** ALPN protocol. */
  alpn: string;
  /** Idle timeout (the smaller of both peers' values applies). */
  idleTimeoutMs: number;
  /** Send a keep-alive PING this often when nothing else is sent; 0 disables. */
  keepAliveMs: number;
  /** Give up on a handshake that has not completed after this long. */
  handshakeTimeoutMs: number;
  /** Largest UDP payload sent. 1232 fits a 1280-byte IPv6 MTU path. */
  maxUdpPayload: number;
  /** Initial per-stream flow-control window (engines may grow it). */
  streamWindow: number;
  /** Initial connection flow-control window. */
  connectionWindow: number;
  /** Concurrent bidirectional streams the peer may open towards us. */
  maxStreams: number;
  /** Congestion control: `cubic`, `reno` or `bbr`. */
  congestionControl: "cubic" | "reno" | "bbr";
}

/** Defaults: the reference's values where it fixes one (keep-alive 2 s, idle 5 s, handshake 2 s). */
export const DEFAULT_TRANSPORT: Readonly<TransportOptions> = {
  alpn: ALPN,
  idleTimeoutMs: 5_000,
  keepAliveMs: 2_000,
  handshakeTimeoutMs: 2_000,
  maxUdpPayload: 1232,
  streamWindow: 1 << 20,
  connectionWindow: 8 << 20,
  maxStreams: 10_000,
  congestionControl: "cubic",
};

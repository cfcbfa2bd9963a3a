/**
 * The QUIC interface every engine implements: endpoints that dial and listen, connections that
 * open and accept bidirectional streams, and streams as `node:stream` Duplexes. The roles and the
 * tunnel code see only these types; an engine's own API stays inside its folder.
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import type { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { TransportOptions } from "../protocol.ts";
import type { QuicError } from "./errors.ts";

export type { TransportOptions };

/** Names of the QUIC engines; `auto` picks one for the runtime. */
export type QuicEngineName = "quiche" | "node-quic";

/** Names of the engines: the QUIC ones and the TCP transport. */
export type EngineName = QuicEngineName | "tcp";

/** PEM contents of the local identity and of the CA that verifies the peer. */
export interface TlsMaterial {
  ca: Uint8Array;
  cert: Uint8Array;
  key: Uint8Array;
}

/**
 * A bidirectional QUIC stream. Writing `end()` sends a FIN; the peer's FIN ends the readable
 * side; a reset by the peer (or the connection's loss) is an `error`; `destroy()` resets both
 * directions.
 */
export interface QuicStream extends Duplex {
  /** QUIC stream id (`-1` while an engine waits for the peer's stream credit). */
  readonly id: number;
}

/** Path and traffic figures of one connection, for metrics. */
export interface ConnectionStats {
  /** Smoothed round-trip time in milliseconds. */
  rttMs: number;
  /** Congestion window in bytes. */
  cwndBytes: number;
  packetsSent: number;
  packetsReceived: number;
  packetsLost: number;
  bytesSent: number;
  bytesReceived: number;
}

/** Events of a {@link QuicConnection}. */
export interface ConnectionEvents {
  /**
   * A stream the peer opened. Streams that arrive while nobody listens are held until the first
   * listener is added, so none is lost between `connect()` resolving and the caller's `on()`.
   */
  stream: [QuicStream];
  /** The connection ended: `undefined` for a clean close by either side, else the reason. */
  close: [QuicError | undefined];
  /**
   * The peer's packets now come from `host:port`, as after a NAT rebinding, and ours follow them
   * (`peer` keeps naming the first address).
   */
  moved: [string];
}

/** One established QUIC connection with a verified peer certificate. */
export interface QuicConnection extends EventEmitter<ConnectionEvents> {
  /** `host:port` of the peer as seen on the socket. */
  readonly peer: string;
  /** The peer's leaf certificate. */
  readonly peerCertificate: X509Certificate | undefined;
  /** Subject of the peer's certificate, `CN=...` parts joined by commas. */
  readonly peerSubject: string;
  /** True once the connection has ended. */
  readonly closed: boolean;
  /** Streams open now. */
  readonly streamCount: number;
  /** Streams the peer may have open towards this side at once (what this side granted it). */
  readonly incomingStreamLimit: number;
  /**
   * Opens a bidirectional stream. Rejects with a {@link QuicError} when the connection is not usable
   * or the peer's stream limit is reached, so a caller can try another connection or answer 503.
   */
  openStream(): Promise<QuicStream>;
  /** Closes with an application error code and reason; open streams end with an error. */
  close(code?: number, reason?: string): void;
  /** Path and traffic figures. */
  stats(): ConnectionStats;
}

/** Counters of a {@link QuicServer}. */
export interface ServerStats {
  /** Handshakes under way now. */
  handshakesInProgress: number;
  /** Initial packets or handshakes refused before a connection was established, by reason. */
  refused: Record<string, number>;
}

/** Events of a {@link QuicServer}. */
export interface ServerEvents {
  /** A handshake completed with a verified client certificate. */
  connection: [QuicConnection];
  /** A handshake that got far enough to have a peer failed (certificate, timeout). */
  rejected: [peer: string, error: QuicError | undefined];
  /** The UDP socket failed. */
  error: [Error];
}

/** A listening QUIC endpoint. */
export interface QuicServer extends EventEmitter<ServerEvents> {
  /** The bound UDP address. */
  address(): { host: string; port: number };
  /**
   * Uses new certificates for handshakes from now on; open connections keep theirs. Throws a
   * QuicError saying why when the engine cannot, and keeps the old ones.
   */
  setTls(tls: TlsMaterial): void;
  /** Handshake and refusal counters. */
  stats(): ServerStats;
  /** Closes every connection and the socket. */
  close(): Promise<void>;
}

/** Options for {@link QuicEngine.connect}. */
export interface ConnectOptions {
  /** Server host name or IP literal. */
  host: string;
  port: number;
  /** Name the server certificate must carry (SNI and verification). */
  serverName: string;
  tls: TlsMaterial;
  transport?: Partial<TransportOptions>;
  /** An HTTP CONNECT proxy to reach the server through (the TCP transport only; QUIC ignores it). */
  proxy?: URL;
}

/**
 * Limits on handshakes a server keeps state for; beyond them Initials are dropped and counted.
 * The quiche engine applies them (defaults 1024 and 64); node-quic leaves this to lsquic.
 */
export interface HandshakeLimits {
  /** Handshakes under way at once. */
  maxHandshakes: number;
  /** Handshakes under way at once from one source address. */
  maxHandshakesPerAddress: number;
}

/** Options for {@link QuicEngine.listen}. */
export interface ListenOptions {
  host: string;
  port: number;
  tls: TlsMaterial;
  transport?: Partial<TransportOptions>;
  /** Validate client addresses with a stateless Retry before keeping any state (default true). */
  retry?: boolean;
  /** Handshake limits (see {@link HandshakeLimits}). */
  limits?: Partial<HandshakeLimits>;
}

/** A transport option an engine cannot honour as asked, and why, in words. */
export interface TransportCaveat {
  option: keyof TransportOptions;
  reason: string;
}

/** A QUIC implementation behind the interface above. */
export interface QuicEngine {
  readonly name: EngineName;
  /**
   * Why this engine's server cannot validate client addresses with a stateless Retry, when it
   * cannot: {@link ListenOptions.retry} is then not honoured, and a role says so at start.
   */
  readonly retryCaveat?: string;
  /**
   * Why this engine's connection does not survive a NAT rebinding (the client's packets arriving
   * from a new address or port), when it does not: its streams then fail, and the agent reconnects.
   */
  readonly rebindingCaveat?: string;
  /**
   * What of `transport` (defaults filled in) this engine does otherwise than asked; empty when it
   * honours all of it. A role refuses such an option when the user set it, and warns otherwise.
   */
  transportCaveats(transport: TransportOptions): TransportCaveat[];
  /**
   * Dials a server and resolves once the handshake is confirmed by the server (so a refused client
   * certificate is a rejection here, not a later close). Rejects with a {@link QuicError} naming
   * the server and the TLS alert or timeout.
   */
  connect(options: ConnectOptions): Promise<QuicConnection>;
  /** Binds a server endpoint; rejects with the address in the message when binding fails. */
  listen(options: ListenOptions): Promise<QuicServer>;
  /**
   * Dials without verifying the server and resolves with its certificate, or undefined: for
   * explaining a handshake that failed (which names the certificate carries, who signed it).
   */
  peekCertificate(options: ConnectOptions): Promise<X509Certificate | undefined>;
}

/**
 * A lean QUIC transport on the quiche binding: client and server endpoints over one `node:dgram`
 * socket each, mutual TLS, Retry, version negotiation, keep-alive, and bidirectional streams as
 * `node:stream` Duplexes with backpressure both ways.
 *
 * What keeps it fast (see shared/DESIGN.md): a datagram only feeds `conn.recv`; the expensive part
 * (reading streams, refilling writes, emitting packets, re-arming the timer) runs once per event-loop
 * turn for every connection that changed.
 *
 * @module
 */
import { createHmac, randomBytes, timingSafeEqual, X509Certificate } from "node:crypto";
import dgram from "node:dgram";
import { lookup } from "node:dns/promises";
import { EventEmitter } from "node:events";
import { isIP } from "node:net";
import { Duplex } from "node:stream";
import { type Config, type Connection, type ConnectionError, quiche } from "./quiche.ts";
import { MAX_DATAGRAM, type PacketProducer, packetSender } from "./udp.ts";

/** Tunables shared by client and server. */
export interface TransportOptions {
  /** ALPN protocol; the Go reference uses `quic-echo-example`. */
  alpn: string;
  /** Idle timeout in ms (the smaller of both peers' values applies). */
  idleTimeoutMs: number;
  /** Send a keep-alive PING this often when nothing else is sent; 0 disables. */
  keepAliveMs: number;
  /** Give up on a handshake that has not completed after this long. */
  handshakeTimeoutMs: number;
  /** Largest UDP payload we send. 1232 fits a 1280-byte IPv6 MTU path. */
  maxUdpPayload: number;
  /** Initial per-stream flow-control window in bytes (auto-tuned upward by quiche). */
  streamWindow: number;
  /** Initial connection flow-control window in bytes. */
  connectionWindow: number;
  /** Concurrent bidirectional streams the peer may open towards us. */
  maxStreams: number;
  /** Congestion control: `cubic`, `reno` or `bbr`. */
  congestionControl: string;
}

/** PEM contents of the local identity and the CA that verifies the peer. */
export interface TlsMaterial {
  ca: Uint8Array;
  cert: Uint8Array;
  key: Uint8Array;
}

/** Defaults matching the Go reference where it fixes a value. */
export const DEFAULT_TRANSPORT: TransportOptions = {
  alpn: "quic-echo-example",
  idleTimeoutMs: 5_000,
  keepAliveMs: 2_000,
  handshakeTimeoutMs: 2_000,
  maxUdpPayload: 1232,
  streamWindow: 1 << 20,
  connectionWindow: 8 << 20,
  maxStreams: 10_000,
  congestionControl: "cubic",
};

/** Application error code sent in RESET_STREAM / STOP_SENDING when a stream is torn down. */
export const STREAM_CANCELLED = 0x10c;

const SIGALGS = [
  "rsa_pkcs1_sha256",
  "rsa_pkcs1_sha384",
  "rsa_pkcs1_sha512",
  "rsa_pss_rsae_sha256",
  "rsa_pss_rsae_sha384",
  "rsa_pss_rsae_sha512",
  "ecdsa_secp256r1_sha256",
  "ecdsa_secp384r1_sha384",
  "ecdsa_secp521r1_sha512",
  "ed25519",
].join(":");
const CID_LENGTH = 20;
const UDP_BUFFER_BYTES = 4 << 20;
const RETRY_TOKEN_TTL_MS = 10_000;
const EMPTY = new Uint8Array(0);
const TLS_ALERTS: Record<number, string> = {
  40: "handshake failure",
  42: "bad certificate",
  43: "unsupported certificate",
  44: "certificate revoked",
  45: "certificate expired",
  46: "certificate unknown",
  48: "unknown CA",
  49: "access denied",
  80: "internal error",
  112: "unrecognized name",
  116: "certificate required",
  120: "no application protocol",
};

/** An error of the QUIC layer; `code` is the QUIC or application error code when there is one. */
export class QuicError extends Error {
  code?: number;
  constructor(message: string, options?: { code?: number; cause?: unknown }) {
    super(message, options?.cause ? { cause: options.cause } : undefined);
    this.name = "QuicError";
    this.code = options?.code;
  }
}

/** Builds a quiche config for one side of a mutual-TLS connection. */
function buildConfig(tls: TlsMaterial, options: TransportOptions): Config {
  let config: Config;
  try {
    config = quiche.Config.withBoringSslCtx(true, false, tls.ca, [tls.key], [tls.cert], SIGALGS);
  } catch (err) {
    throw new QuicError(`TLS configuration rejected: ${(err as Error).message}`, { cause: err });
  }
  config.setApplicationProtos([options.alpn]);
  config.setMaxIdleTimeout(options.idleTimeoutMs);
  config.setMaxRecvUdpPayloadSize(MAX_DATAGRAM);
  config.setMaxSendUdpPayloadSize(options.maxUdpPayload);
  config.setInitialMaxData(options.connectionWindow);
  config.setInitialMaxStreamDataBidiLocal(options.streamWindow);
  config.setInitialMaxStreamDataBidiRemote(options.streamWindow);
  config.setInitialMaxStreamDataUni(0);
  config.setInitialMaxStreamsBidi(options.maxStreams);
  config.setInitialMaxStreamsUni(0);
  config.setMaxStreamWindow(Math.max(options.streamWindow, 16 << 20));
  config.setMaxConnectionWindow(Math.max(options.connectionWindow, 24 << 20));
  config.setDisableActiveMigration(true);
  config.setCcAlgorithmName(options.congestionControl);
  config.grease(true);
  return config;
}

/** Explains a CONNECTION_CLOSE in words: TLS alerts by name, reasons as text. */
function describeConnectionError(error: ConnectionError): string {
  const reason = Buffer.from(error.reason).toString("utf8");
  let text: string;
  if (error.isApp) text = `application code ${error.errorCode}`;
  else if (error.errorCode >= 0x100 && error.errorCode <= 0x1ff) {
    const alert = error.errorCode - 0x100;
    text = `TLS alert ${alert} (${TLS_ALERTS[alert] ?? "unknown"})`;
  } else text = `transport code 0x${error.errorCode.toString(16)}`;
  return reason ? `${text}: ${reason}` : text;
}

// One flush per event-loop turn for every connection that received packets or has writes queued.
const dirty = new Set<QuicConnection>();
let flushScheduled = false;
function scheduleFlush(connection: QuicConnection): void {
  dirty.add(connection);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushDirty);
  }
}
function flushDirty(): void {
  flushScheduled = false;
  const connections = [...dirty];
  dirty.clear();
  for (const connection of connections) connection.flush();
}

const recvBuffer = Buffer.allocUnsafe(64 * 1024);

/** A bidirectional QUIC stream. FIN is end-of-stream both ways; a peer reset is an error. */
export class QuicStream extends Duplex {
  /** QUIC stream id. */
  readonly id: number;
  #connection: QuicConnection;
  #pending: Uint8Array | null = null;
  #pendingCallback: ((err?: Error | null) => void) | null = null;
  #finPending: ((err?: Error | null) => void) | null = null;
  #readPaused = false;
  #readDone = false;
  #writeDone = false;

  constructor(connection: QuicConnection, id: number) {
    super({ allowHalfOpen: true, highWaterMark: 256 * 1024 });
    this.#connection = connection;
    this.id = id;
  }

  /** Reads what quiche holds for this stream into the readable side until it pauses or ends. */
  deliver(): void {
    if (this.#readPaused || this.#readDone) return;
    const native = this.#connection.native;
    for (;;) {
      let result: [number, boolean] | null;
      try {
        result = native.streamRecv(this.id, recvBuffer);
      } catch (err) {
        this.#readDone = true;
        this.destroy(streamError(err, this.id));
        return;
      }
      if (result === null) return;
      const [length, fin] = result;
      if (length === 0 && !fin) return;
      const more = length === 0 || this.push(Buffer.from(recvBuffer.subarray(0, length)));
      if (fin) {
        this.#readDone = true;
        this.push(null);
        return;
      }
      if (!more) {
        this.#readPaused = true;
        return;
      }
    }
  }

  /** Hands queued bytes (and a pending FIN) to quiche as far as flow control allows. */
  sendPending(): void {
    const native = this.#connection.native;
    try {
      while (this.#pending !== null) {
        const sent = native.streamSend(this.id, this.#pending, false) ?? 0;
        if (sent === 0) {
          this.#connection.wantWrite(this);
          return;
        }
        this.#connection.markDirty();
        if (sent < this.#pending.length) {
          this.#pending = this.#pending.subarray(sent);
          continue;
        }
        this.#pending = null;
        const callback = this.#pendingCallback;
        this.#pendingCallback = null;
        callback?.();
      }
      if (this.#finPending !== null) {
        if (native.streamSend(this.id, EMPTY, true) === null) {
          this.#connection.wantWrite(this);
          return;
        }
        this.#writeDone = true;
        this.#connection.sendFinNow(this.id);
        const callback = this.#finPending;
        this.#finPending = null;
        callback();
      }
    } catch (err) {
      this.#writeDone = true;
      this.destroy(streamError(err, this.id));
    }
  }

  override _read(): void {
    if (!this.#readPaused) return;
    this.#readPaused = false;
    this.#connection.wantRead(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.#connection.closed || chunk.length === 0) {
      callback(this.#connection.closed ? new QuicError("QUIC connection is closed") : null);
      return;
    }
    this.#pending = chunk;
    this.#pendingCallback = callback;
    this.sendPending();
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.#connection.closed) {
      callback(new QuicError("QUIC connection is closed"));
      return;
    }
    this.#finPending = callback;
    this.sendPending();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const native = this.#connection.native;
    if (!this.#connection.closed) {
      try {
        if (!this.#readDone) native.streamShutdown(this.id, quiche.Shutdown.Read, STREAM_CANCELLED);
      } catch {
        // already finished on the peer's side
      }
      try {
        if (!this.#writeDone) native.streamShutdown(this.id, quiche.Shutdown.Write, STREAM_CANCELLED);
      } catch {
        // already finished on our side
      }
    }
    this.#pendingCallback = null;
    this.#finPending = null;
    this.#connection.forget(this);
    callback(err);
  }
}

function streamError(err: unknown, id: number): QuicError {
  const message = String((err as Error)?.message ?? err);
  const reset = /StreamReset\((\d+)\)/.exec(message);
  if (reset) return new QuicError(`stream ${id} reset by peer (code ${reset[1]})`, { code: Number(reset[1]) });
  const stopped = /StreamStopped\((\d+)\)/.exec(message);
  if (stopped) {
    return new QuicError(`stream ${id} stopped by peer (code ${stopped[1]})`, { code: Number(stopped[1]) });
  }
  return new QuicError(`stream ${id}: ${message}`, { cause: err });
}

interface ConnectionEvents {
  stream: [QuicStream];
  established: [];
  close: [QuicError | undefined];
}

type SendPackets = (produce: PacketProducer) => void;

/**
 * One QUIC connection. Emits `established`, `stream` (a stream the peer opened) and `close` (with
 * the reason as an error, or `undefined` for a clean close by either side).
 */
export class QuicConnection extends EventEmitter<ConnectionEvents> {
  /** The quiche connection; exposed for stats. */
  readonly native: Connection;
  /** `host:port` of the peer as seen on the socket. */
  readonly peer: string;
  /** Subject of the peer's certificate, once established. */
  peerSubject = "";
  /** The peer's leaf certificate, once established. */
  peerCertificate: X509Certificate | undefined;
  established = false;
  closed = false;
  #isServer: boolean;
  #sendPackets: SendPackets;
  #produce: PacketProducer;
  #options: TransportOptions;
  #streams = new Map<number, QuicStream>();
  #wantWrite = new Set<QuicStream>();
  #wantRead = new Set<QuicStream>();
  #nextLocalStream: number;
  #highestRemoteStream = -1;
  #remoteGaps = new Set<number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #deadline = 0;
  #keepAlive: ReturnType<typeof setInterval> | undefined;
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #closeError: QuicError | undefined;
  #peerCompleted = false;

  constructor(native: Connection, options: { isServer: boolean; peer: string; send: SendPackets; transport: TransportOptions }) {
    super();
    this.native = native;
    this.peer = options.peer;
    this.#isServer = options.isServer;
    this.#sendPackets = options.send;
    this.#produce = (buffer) => {
      let result: ReturnType<Connection["send"]>;
      try {
        result = native.send(buffer);
      } catch {
        return null;
      }
      return result === null ? null : { length: result[0], host: result[1].to.host, port: result[1].to.port };
    };
    this.#options = options.transport;
    this.#nextLocalStream = options.isServer ? 1 : 0;
    this.#handshakeTimer = setTimeout(() => {
      if (!this.established) {
        this.#fail(new QuicError(`QUIC handshake with ${this.peer} timed out after ${options.transport.handshakeTimeoutMs} ms`));
      }
    }, options.transport.handshakeTimeoutMs);
  }

  /** Number of streams currently open on this connection. */
  get streamCount(): number {
    return this.#streams.size;
  }

  /** Feeds one received datagram to quiche; the work it causes happens in the next flush. */
  receive(datagram: Buffer, info: { from: { host: string; port: number }; to: { host: string; port: number } }): void {
    if (this.closed) return;
    // A packet that arrives after our side completed the handshake shows the peer completed it
    // too (the server's HANDSHAKE_DONE, or its refusal of our certificate).
    if (!this.#peerCompleted && this.native.isEstablished()) this.#peerCompleted = true;
    try {
      this.native.recv(datagram, info);
    } catch {
      // A packet quiche rejects (undecryptable, duplicate) is dropped, as QUIC requires.
    }
    scheduleFlush(this);
  }

  /**
   * Opens a bidirectional stream to the peer. Throws a QuicError when the connection is not usable
   * or the peer's stream limit is reached, so a caller can pick another connection or answer 503.
   */
  openStream(): QuicStream {
    if (!this.established || this.closed || this.native.isDraining()) {
      throw new QuicError(`QUIC connection to ${this.peer} is not open`);
    }
    if (this.native.peerStreamsLeftBidi() === 0) {
      throw new QuicError(`stream limit reached on QUIC connection to ${this.peer}`);
    }
    const id = this.#nextLocalStream;
    this.#nextLocalStream += 4;
    // Setting a priority creates the stream inside quiche, so the stream limit accounts for it now.
    this.native.streamPriority(id, 127, true);
    const stream = new QuicStream(this, id);
    this.#streams.set(id, stream);
    return stream;
  }

  /** Closes the connection with an application error code; streams still open are destroyed. */
  close(code = 0, reason = ""): void {
    if (this.closed) return;
    try {
      this.native.close(true, code, Buffer.from(reason));
    } catch {
      // already closing
    }
    this.flush();
  }

  /** Asks for a flush in this event-loop turn. */
  markDirty(): void {
    scheduleFlush(this);
  }

  /**
   * @internal A FIN written after the stream's data can be lost inside quiche
   * (cloudflare/quiche#2525): when an ACK of that data is processed before a packet carries the
   * FIN, quiche counts the stream as complete, forgets it and never sends the FIN, and the peer
   * waits for the end of the stream. So the FIN goes first in line and out at once, before the
   * next datagram is read. (A lost packet carrying the FIN can still hit the same bug; see
   * --tunnel-idle-timeout.)
   */
  sendFinNow(id: number): void {
    try {
      this.native.streamPriority(id, 0, false);
    } catch {
      // quiche already forgot the stream: nothing is left to hurry
    }
    this.#sendPackets(this.#produce);
    scheduleFlush(this);
  }

  /** @internal a stream has bytes quiche would not take yet. */
  wantWrite(stream: QuicStream): void {
    this.#wantWrite.add(stream);
  }

  /** @internal a paused stream's reader wants more. */
  wantRead(stream: QuicStream): void {
    this.#wantRead.add(stream);
    scheduleFlush(this);
  }

  /** @internal a stream was destroyed. */
  forget(stream: QuicStream): void {
    this.#streams.delete(stream.id);
    this.#wantWrite.delete(stream);
    this.#wantRead.delete(stream);
    if (!this.closed) scheduleFlush(this);
  }

  /** Runs the connection: deliver stream data, refill writes, send packets, re-arm the timer. */
  flush(): void {
    if (this.closed) return;
    const native = this.native;
    // A client waits for the server's word: in TLS 1.3 the client finishes first, and the server may
    // still refuse its certificate. Reporting "established" only then avoids a connection that works
    // for the agent but not yet (or never) for the server.
    if (!this.established && native.isEstablished() && (this.#isServer || this.#peerCompleted) && !native.isDraining()) {
      this.#onEstablished();
    }
    if (this.established) {
      if (this.#wantRead.size > 0) {
        const readers = [...this.#wantRead];
        this.#wantRead.clear();
        for (const stream of readers) stream.deliver();
      }
      for (const id of native.readable()) this.#onReadable(id);
      if (this.#wantWrite.size > 0) {
        const writers = [...this.#wantWrite];
        this.#wantWrite.clear();
        for (const stream of writers) stream.sendPending();
      }
    }
    this.#sendPackets(this.#produce);
    if (native.isClosed()) this.#onClosed();
    else this.#armTimer();
  }

  #armTimer(): void {
    const timeout = this.native.timeout();
    if (timeout === null) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      return;
    }
    const deadline = Date.now() + timeout;
    if (this.#timer !== undefined && deadline === this.#deadline) return;
    clearTimeout(this.#timer);
    this.#deadline = deadline;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.native.onTimeout();
      this.flush();
    }, timeout);
  }

  #onEstablished(): void {
    if (this.#isServer) {
      const chain = this.native.peerCertChain();
      if (chain === null || chain.length === 0) {
        // quiche requests but does not require a client certificate: enforce it here.
        this.native.close(false, 0x100 + 116, Buffer.from("client certificate required"));
        this.#closeError = new QuicError(`peer ${this.peer} presented no client certificate`);
        return;
      }
    }
    const chain = this.native.peerCertChain();
    if (chain && chain.length > 0) {
      try {
        this.peerCertificate = new X509Certificate(chain[0]);
        this.peerSubject = this.peerCertificate.subject.replaceAll("\n", ",");
      } catch {
        this.peerSubject = "(unparsable certificate)";
      }
    }
    this.established = true;
    clearTimeout(this.#handshakeTimer);
    if (this.#options.keepAliveMs > 0) {
      this.#keepAlive = setInterval(() => {
        this.native.sendAckEliciting();
        scheduleFlush(this);
      }, this.#options.keepAliveMs);
    }
    this.emit("established");
  }

  #onReadable(id: number): void {
    let stream = this.#streams.get(id);
    if (stream === undefined) {
      if (!this.#acceptRemoteStream(id)) {
        discardStream(this.native, id);
        return;
      }
      stream = new QuicStream(this, id);
      this.#streams.set(id, stream);
      this.emit("stream", stream);
    }
    stream.deliver();
  }

  /** True when `id` is a stream the peer opens now for the first time (ids may arrive out of order). */
  #acceptRemoteStream(id: number): boolean {
    const remoteBit = this.#isServer ? 0 : 1;
    if ((id & 1) !== remoteBit || (id & 2) !== 0) return false;
    if (id > this.#highestRemoteStream) {
      for (let gap = this.#highestRemoteStream + 4; gap < id; gap += 4) {
        if (gap >= 0) this.#remoteGaps.add(gap);
      }
      if (this.#highestRemoteStream < 0) {
        for (let gap = remoteBit; gap < id; gap += 4) this.#remoteGaps.add(gap);
      }
      this.#highestRemoteStream = id;
      return true;
    }
    return this.#remoteGaps.delete(id);
  }

  #fail(error: QuicError): void {
    if (this.closed) return;
    this.#closeError ??= error;
    try {
      this.native.close(false, 0, Buffer.from(error.message.slice(0, 100)));
    } catch {
      // already closing
    }
    this.#sendPackets(this.#produce);
    this.#onClosed();
  }

  #onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#keepAlive);
    dirty.delete(this);
    const error = this.#closeError ?? this.#describeClose();
    for (const stream of [...this.#streams.values()]) {
      stream.destroy(new QuicError(`QUIC connection to ${this.peer} closed${error ? `: ${error.message}` : ""}`));
    }
    this.emit("close", error);
  }

  #describeClose(): QuicError | undefined {
    const peerError = this.native.peerError();
    if (peerError && !(peerError.isApp && peerError.errorCode === 0) && !(!peerError.isApp && peerError.errorCode === 0)) {
      return new QuicError(`closed by peer ${this.peer}: ${describeConnectionError(peerError)}`, { code: peerError.errorCode });
    }
    const localError = this.native.localError();
    if (localError && localError.errorCode !== 0) {
      return new QuicError(`closed locally: ${describeConnectionError(localError)}`, { code: localError.errorCode });
    }
    if (this.native.isTimedOut()) {
      return new QuicError(`QUIC connection to ${this.peer} timed out (no packets for ${this.#options.idleTimeoutMs} ms)`);
    }
    return undefined;
  }
}

function discardStream(native: Connection, id: number): void {
  try {
    while (native.streamRecv(id, recvBuffer) !== null);
  } catch {
    // reset or unknown: nothing to keep
  }
}

/** Options for {@link connect}. */
export interface ConnectOptions {
  /** Server host name or IP literal. */
  host: string;
  port: number;
  /** Name the server certificate must carry (SNI and verification). */
  serverName: string;
  tls: TlsMaterial;
  transport?: Partial<TransportOptions>;
}

/**
 * Dials a QUIC server and resolves once the handshake (with server certificate verification) is
 * done. Rejects with a QuicError that names the server and the TLS alert or timeout.
 */
export async function connect(options: ConnectOptions): Promise<QuicConnection> {
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport };
  const config = buildConfig(options.tls, transport);
  const target = isIP(options.host)
    ? { address: options.host, family: isIP(options.host) }
    : await lookup(options.host).catch((err) => {
        throw new QuicError(`cannot resolve QUIC server ${options.host}: ${err.code ?? err.message}`, { cause: err });
      });
  const socket = dgram.createSocket(target.family === 6 ? "udp6" : "udp4");
  const peer = target.family === 6 ? `[${target.address}]:${options.port}` : `${target.address}:${options.port}`;
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(0, target.family === 6 ? "::" : "0.0.0.0", () => {
        socket.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    socket.close();
    throw new QuicError(`cannot open a UDP socket for ${peer}: ${(err as Error).message}`, { cause: err });
  }
  tuneSocket(socket);
  const recvInfo = {
    from: { host: target.address, port: options.port },
    to: { host: target.family === 6 ? "::" : "0.0.0.0", port: socket.address().port },
  };
  const native = quiche.Connection.connect(options.serverName, randomBytes(CID_LENGTH), recvInfo.to, recvInfo.from, config);
  const connection = new QuicConnection(native, { isServer: false, peer, send: packetSender(socket), transport });
  socket.on("message", (datagram, rinfo) => {
    // The socket is not connected (so that sends can be batched); ignore anyone but the server.
    if (rinfo.port === options.port && rinfo.address === target.address) connection.receive(datagram, recvInfo);
  });
  socket.on("error", () => {
    // ICMP errors (port unreachable) surface here; the handshake or idle timer reports them.
  });
  connection.once("close", () => socket.close());
  return await new Promise<QuicConnection>((resolve, reject) => {
    const onClose = (error: QuicError | undefined) => reject(error ?? new QuicError(`QUIC connection to ${peer} closed during handshake`));
    connection.once("close", onClose);
    connection.once("established", () => {
      connection.off("close", onClose);
      resolve(connection);
    });
    connection.flush();
  });
}

function tuneSocket(socket: dgram.Socket): void {
  try {
    socket.setRecvBufferSize(UDP_BUFFER_BYTES);
    socket.setSendBufferSize(UDP_BUFFER_BYTES);
  } catch {
    // Some runtimes do not support resizing; the kernel default still works, only slower.
  }
}

/** Options for {@link listen}. */
export interface ListenOptions {
  host: string;
  port: number;
  tls: TlsMaterial;
  transport?: Partial<TransportOptions>;
  /** Validate client addresses with a stateless Retry before keeping any state (default true). */
  retry?: boolean;
}

interface ServerEvents {
  connection: [QuicConnection];
  rejected: [QuicConnection, QuicError | undefined];
  error: [Error];
}

/**
 * A QUIC server endpoint. Emits `connection` for every handshake that completed with a verified
 * client certificate, `rejected` for one that failed.
 */
export class QuicServer extends EventEmitter<ServerEvents> {
  #socket: dgram.Socket;
  #config: Config;
  #transport: TransportOptions;
  #retry: boolean;
  #connections = new Map<string, QuicConnection>();
  #tokenKey = randomBytes(32);
  #local: { host: string; port: number };
  #sendBuffer = Buffer.allocUnsafe(MAX_DATAGRAM);
  #send: SendPackets;

  constructor(socket: dgram.Socket, config: Config, transport: TransportOptions, retry: boolean) {
    super();
    this.#socket = socket;
    this.#config = config;
    this.#transport = transport;
    this.#retry = retry;
    const address = socket.address();
    this.#local = { host: address.address, port: address.port };
    this.#send = packetSender(socket);
    socket.on("message", (datagram, rinfo) => this.#onDatagram(datagram, rinfo));
    socket.on("error", (err) => this.emit("error", err));
  }

  /** Uses new certificates for handshakes from now on; open connections keep theirs. */
  setTls(tls: TlsMaterial): void {
    this.#config = buildConfig(tls, this.#transport);
  }

  /** The bound UDP address. */
  address(): { host: string; port: number } {
    return { ...this.#local };
  }

  /** Closes every connection and the socket. */
  close(): Promise<void> {
    for (const connection of new Set(this.#connections.values())) connection.close(0, "server shutting down");
    return new Promise((resolve) => this.#socket.close(() => resolve()));
  }

  #onDatagram(datagram: Buffer, rinfo: dgram.RemoteInfo): void {
    const info = { from: { host: rinfo.address, port: rinfo.port }, to: this.#local };
    if ((datagram[0] & 0x80) === 0) {
      // Short header: the destination connection id is the next CID_LENGTH bytes.
      if (datagram.length < 1 + CID_LENGTH) return;
      this.#connections.get(datagram.toString("hex", 1, 1 + CID_LENGTH))?.receive(datagram, info);
      return;
    }
    let header: ReturnType<typeof quiche.Header.fromSlice>;
    try {
      header = quiche.Header.fromSlice(datagram, CID_LENGTH);
    } catch {
      return;
    }
    const dcid = Buffer.from(header.dcid);
    const existing = this.#connections.get(dcid.toString("hex"));
    if (existing) {
      existing.receive(datagram, info);
      return;
    }
    if (header.ty !== quiche.Type.Initial) return;
    if (!quiche.versionIsSupported(header.version)) {
      const length = quiche.negotiateVersion(header.scid, header.dcid, this.#sendBuffer);
      this.#sendRaw(length, rinfo);
      return;
    }
    if (datagram.length < quiche.MIN_CLIENT_INITIAL_LEN) return;
    let scid: Buffer;
    let odcid: Buffer | null = null;
    if (this.#retry) {
      const token = header.token ? Buffer.from(header.token) : undefined;
      if (!token || token.length === 0) {
        const newScid = randomBytes(CID_LENGTH);
        const length = quiche.retry(header.scid, header.dcid, newScid, this.#mintToken(dcid, rinfo), header.version, this.#sendBuffer);
        this.#sendRaw(length, rinfo);
        return;
      }
      odcid = this.#validateToken(token, rinfo);
      if (odcid === null || dcid.length !== CID_LENGTH) return;
      scid = dcid;
    } else {
      scid = randomBytes(CID_LENGTH);
    }
    this.#accept(scid, odcid, dcid, datagram, info);
  }

  #accept(
    scid: Buffer,
    odcid: Buffer | null,
    dcid: Buffer,
    datagram: Buffer,
    info: { from: { host: string; port: number }; to: { host: string; port: number } },
  ): void {
    let native: Connection;
    try {
      native = quiche.Connection.accept(scid, odcid, this.#local, info.from, this.#config);
    } catch {
      return;
    }
    const peer = info.from.host.includes(":") ? `[${info.from.host}]:${info.from.port}` : `${info.from.host}:${info.from.port}`;
    const connection = new QuicConnection(native, { isServer: true, peer, send: this.#send, transport: this.#transport });
    const keys = [scid.toString("hex"), dcid.toString("hex")];
    for (const key of keys) this.#connections.set(key, connection);
    connection.once("established", () => this.emit("connection", connection));
    connection.once("close", (error) => {
      for (const key of keys) this.#connections.delete(key);
      if (!connection.established) this.emit("rejected", connection, error);
    });
    connection.receive(datagram, info);
  }

  #sendRaw(length: number, rinfo: dgram.RemoteInfo): void {
    this.#socket.send(Buffer.from(this.#sendBuffer.subarray(0, length)), rinfo.port, rinfo.address);
  }

  /** Retry token: issue time, original DCID, and an HMAC binding both to the client's address. */
  #mintToken(odcid: Buffer, rinfo: dgram.RemoteInfo): Buffer {
    const time = Buffer.alloc(8);
    time.writeBigUInt64BE(BigInt(Date.now()));
    const body = Buffer.concat([time, Buffer.from([odcid.length]), odcid]);
    return Buffer.concat([body, this.#tokenMac(body, rinfo)]);
  }

  #validateToken(token: Buffer, rinfo: dgram.RemoteInfo): Buffer | null {
    if (token.length < 9 + 32) return null;
    const odcidLength = token[8];
    const bodyLength = 9 + odcidLength;
    if (token.length !== bodyLength + 32) return null;
    const body = token.subarray(0, bodyLength);
    if (!timingSafeEqual(token.subarray(bodyLength), this.#tokenMac(body, rinfo))) return null;
    const age = Date.now() - Number(body.readBigUInt64BE(0));
    if (age < 0 || age > RETRY_TOKEN_TTL_MS) return null;
    return Buffer.from(body.subarray(9));
  }

  #tokenMac(body: Buffer, rinfo: dgram.RemoteInfo): Buffer {
    return createHmac("sha256", this.#tokenKey).update(body).update(`${rinfo.address}|${rinfo.port}`).digest();
  }
}

/** Binds a QUIC server endpoint; rejects with the address in the message when binding fails. */
export async function listen(options: ListenOptions): Promise<QuicServer> {
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport, keepAliveMs: options.transport?.keepAliveMs ?? 0 };
  const config = buildConfig(options.tls, transport);
  const socket = dgram.createSocket({ type: isIP(options.host) === 6 ? "udp6" : "udp4" });
  await new Promise<void>((resolve, reject) => {
    socket.once("error", (err) => {
      socket.close();
      reject(new QuicError(`cannot listen for QUIC on ${options.host}:${options.port}: ${err.message}`, { cause: err }));
    });
    socket.bind(options.port, options.host, () => resolve());
  });
  socket.removeAllListeners("error");
  tuneSocket(socket);
  return new QuicServer(socket, config, transport, options.retry ?? true);
}

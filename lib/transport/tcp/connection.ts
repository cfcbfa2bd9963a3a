/**
 * One TLS-on-TCP connection carrying HTTP/2 in reverse, as the interface's connection. The agent
 * dialed it and is the HTTP/2 server; the tunnel server is the HTTP/2 client and opens one stream
 * per tunnel (cloudflared's design). HTTP/2 lets only the client open streams, so the agent's own
 * streams (its hello, its GOAWAY) are asked for: the server opens an "opener" stream first, the
 * agent writes one byte on it per stream it wants, and the server opens each such stream for it.
 * That first stream is also the server's word that it accepted the agent's certificate.
 *
 * @module
 */
import type { ClientHttp2Session, Http2Session, Http2Stream, IncomingHttpHeaders, ServerHttp2Session } from "node:http2";
import type { TLSSocket } from "node:tls";
import type { TransportOptions } from "../../protocol.ts";
import { BaseConnection } from "../connection.ts";
import { describeClose, QuicError } from "../errors.ts";
import type { ConnectionStats, QuicStream } from "../types.ts";
import { type StreamOwner, TcpStream } from "./stream.ts";

/** `:path` of the stream the server opens first; the agent asks for streams on it. */
const OPENER_PATH = "/open";
/** `:path` of a stream the server opened because the agent asked for it. */
const ASKED_PATH = "/asked";
/** `:path` of a stream the server opened for itself (a tunnel). */
const STREAM_PATH = "/stream";
/** HTTP/2 stream ids run out at 2^31; a connection this close to it takes no new streams. */
const LAST_STREAM_ID = 2 ** 31 - 2 ** 16;
/** How long a local close waits for the peer to take our GOAWAY before the socket is destroyed. */
const CLOSE_GRACE_MS = 1_000;
/** RST_STREAM code for a stream this side does not know what to do with. */
const REFUSED_STREAM = 7;
/** GOAWAY code of a connection this side gives up on (idle timeout, socket error); the reason says why. */
const FAILED = 1;

/** An `openStream()` of the agent waiting for the server to open the stream it asked for. */
interface Asked {
  resolve(stream: QuicStream): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Which end of HTTP/2 this side is: the tunnel server opens streams, the agent answers them. */
export type Role = "server" | "agent";

/** A connection of the TCP transport. */
export class TcpConnection extends BaseConnection implements StreamOwner {
  readonly #session: Http2Session;
  readonly #socket: TLSSocket;
  readonly #role: Role;
  readonly #transport: TransportOptions;
  readonly #streams = new Set<TcpStream>();
  readonly #asked: Asked[] = [];
  #opener: Http2Stream | undefined;
  #onOpener: (() => void) | undefined;
  /** Why streams fail from now on; set once the connection is going. */
  #lost: QuicError | undefined;
  /** What `close` reports: undefined for a clean close by either side. */
  #closeReason: QuicError | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #lastHeard = Date.now();
  #lastPing = Date.now();
  #rttMs = 0;
  #bytesSent = 0;
  #bytesReceived = 0;
  closed = false;

  constructor(session: Http2Session, options: { socket: TLSSocket; peer: string; role: Role; transport: TransportOptions }) {
    super(options.peer);
    this.#session = session;
    this.#socket = options.socket;
    this.#role = options.role;
    this.#transport = options.transport;
    this.setPeerCertificate(options.socket.getPeerCertificate(false)?.raw);
    session.on("goaway", (code: number, _last: number, data?: Buffer) => this.#goneAway(code, data?.toString()));
    session.on("error", (err: Error) => this.#fail(new QuicError(`connection to ${this.peer}: ${err.message}`, { cause: err })));
    session.once("close", () => this.#ended());
    options.socket.once("close", () => this.#ended());
    session.on("frameError", () => {});
    // The peer's keep-alive PINGs are what keeps an idle connection alive here, as in QUIC.
    session.on("ping", () => {
      this.#lastHeard = Date.now();
    });
    if (options.role === "server") this.#openOpener(session as ClientHttp2Session);
    else (session as ServerHttp2Session).on("stream", (stream, headers) => this.#accept(stream, headers));
    this.#startTimer();
  }

  /** Resolves once the server's opener stream has arrived (the agent side's handshake confirmation). */
  whenConfirmed(): Promise<void> {
    if (this.#opener || this.#role === "server") return Promise.resolve();
    return new Promise((resolve) => {
      this.#onOpener = resolve;
    });
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  get incomingStreamLimit(): number {
    return this.#transport.maxStreams;
  }

  async openStream(): Promise<QuicStream> {
    if (this.closed || this.#lost) throw new QuicError(`connection to ${this.peer} is not open`);
    if (this.#role === "agent") return this.#ask();
    return this.#request(STREAM_PATH);
  }

  close(code = 0, reason = ""): void {
    if (this.closed || this.#lost) return;
    this.#lost = new QuicError(`closed locally: ${describeClose({ isApp: true, code, reason })}`, { code });
    this.#closeReason = code === 0 ? undefined : this.#lost;
    this.#goAway(code, reason);
  }

  stats(): ConnectionStats {
    return {
      rttMs: this.#rttMs,
      cwndBytes: 0,
      packetsSent: 0,
      packetsReceived: 0,
      packetsLost: 0,
      bytesSent: this.#bytesSent,
      bytesReceived: this.#bytesReceived,
    };
  }

  lostReason(): QuicError | undefined {
    return this.#lost;
  }

  forget(stream: TcpStream): void {
    this.#streams.delete(stream);
  }

  /** Counts stream bytes both ways; what arrives also keeps the connection from idling out. */
  carried(direction: "sent" | "received", bytes: number): void {
    if (direction === "sent") this.#bytesSent += bytes;
    else {
      this.#bytesReceived += bytes;
      this.#lastHeard = Date.now();
    }
  }

  /** Server side: opens a stream on HTTP/2, within the agent's limit and the stream id space. */
  #request(path: string): QuicStream {
    const session = this.#session as ClientHttp2Session;
    const limit = session.remoteSettings.maxConcurrentStreams ?? Number.POSITIVE_INFINITY;
    // The opener takes one of the agent's streams.
    if (this.#streams.size + 1 >= limit) throw new QuicError(`stream limit reached on connection to ${this.peer}`);
    if ((session.state.nextStreamID ?? 0) > LAST_STREAM_ID) {
      // Ended gracefully: open tunnels finish, then the agent dials a fresh connection.
      session.close();
      throw new QuicError(`connection to ${this.peer} has used up its stream ids`);
    }
    return this.#track(session.request({ ":method": "POST", ":path": path }, { endStream: false }));
  }

  #openOpener(session: ClientHttp2Session): void {
    const opener = session.request({ ":method": "POST", ":path": OPENER_PATH }, { endStream: false });
    this.#opener = opener;
    opener.on("error", () => {});
    opener.on("data", (asks: Buffer) => {
      this.#lastHeard = Date.now();
      for (let i = 0; i < asks.length; i++) {
        try {
          this.announceStream(this.#request(ASKED_PATH));
        } catch {
          // Past the limit: the agent's ask times out there, as a stream limit.
        }
      }
    });
  }

  /** Agent side: a stream the server opened. */
  #accept(inner: Http2Stream, headers: IncomingHttpHeaders): void {
    const path = headers[":path"];
    if (this.#lost || (path !== OPENER_PATH && path !== ASKED_PATH && path !== STREAM_PATH)) {
      inner.close(REFUSED_STREAM);
      return;
    }
    (inner as unknown as { respond(headers: Record<string, number>): void }).respond({ ":status": 200 });
    if (path === OPENER_PATH) {
      this.#opener = inner;
      inner.on("error", () => {});
      this.#onOpener?.();
      return;
    }
    const stream = this.#track(inner);
    const asked = path === ASKED_PATH ? this.#asked.shift() : undefined;
    if (asked) {
      clearTimeout(asked.timer);
      asked.resolve(stream);
    } else if (path === ASKED_PATH) stream.destroy();
    else this.announceStream(stream);
  }

  /** Agent side: asks the server for a stream and waits for it. */
  #ask(): Promise<QuicStream> {
    const opener = this.#opener;
    if (!opener || opener.destroyed) return Promise.reject(new QuicError(`connection to ${this.peer} is not open`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#asked.splice(this.#asked.indexOf(asked), 1);
        reject(
          new QuicError(`stream limit reached on connection to ${this.peer} (no stream within ${this.#transport.handshakeTimeoutMs} ms)`),
        );
      }, this.#transport.handshakeTimeoutMs);
      const asked: Asked = { resolve, reject, timer };
      this.#asked.push(asked);
      opener.write(ASK);
    });
  }

  #track(inner: Http2Stream): TcpStream {
    const stream = new TcpStream(inner, this);
    this.#streams.add(stream);
    return stream;
  }

  #goneAway(code: number, reason: string | undefined): void {
    const error = new QuicError(`closed by peer ${this.peer}: ${describeClose({ isApp: true, code, reason })}`, { code });
    this.#lost ??= error;
    if (code !== 0) this.#closeReason ??= error;
  }

  /** Gives up on the connection; the peer is told why, in case it is still there. */
  #fail(error: QuicError): void {
    if (this.closed) return;
    this.#lost ??= error;
    this.#closeReason ??= error;
    this.#goAway(FAILED, error.message.slice(0, 200));
  }

  /** Sends GOAWAY, ends every stream with the connection's end, and closes once the peer took it. */
  #goAway(code: number, reason: string): void {
    try {
      if (!this.#session.destroyed) this.#session.goaway(code, 0, Buffer.from(reason));
    } catch {
      // the socket is already gone
    }
    for (const stream of [...this.#streams]) stream.destroy(this.#lost);
    this.#session.close();
    setTimeout(() => this.#socket.destroy(), CLOSE_GRACE_MS).unref?.();
  }

  /** One timer per connection: the idle deadline, and keep-alive PINGs that also measure the RTT. */
  #startTimer(): void {
    const { idleTimeoutMs, keepAliveMs } = this.#transport;
    const period = Math.max(50, Math.min(idleTimeoutMs / 4, keepAliveMs > 0 ? keepAliveMs / 2 : Number.POSITIVE_INFINITY));
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (now - this.#lastHeard >= idleTimeoutMs) {
        return this.#fail(new QuicError(`connection to ${this.peer} timed out (idle: nothing received for ${idleTimeoutMs} ms)`));
      }
      if (keepAliveMs > 0 && now - this.#lastPing >= keepAliveMs) this.#ping();
    }, period);
    this.#timer.unref?.();
    this.#ping();
  }

  #ping(): void {
    this.#lastPing = Date.now();
    if (this.#session.destroyed) return;
    this.#session.ping((err, durationMs) => {
      if (err) return;
      this.#rttMs = durationMs;
      this.#lastHeard = Date.now();
    });
  }

  #ended(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.#timer);
    if (!this.#lost) {
      // No GOAWAY either way: the peer died, or something between cut the TCP connection.
      this.#lost = new QuicError(`connection to ${this.peer} lost: TCP connection closed without a GOAWAY`);
      this.#closeReason ??= this.#lost;
    }
    for (const asked of this.#asked.splice(0)) {
      clearTimeout(asked.timer);
      asked.reject(this.#lost);
    }
    for (const stream of [...this.#streams]) stream.destroy(this.#lost);
    this.#socket.destroy();
    this.emit("close", this.#closeReason);
  }
}

/** The byte an agent writes on the opener for each stream it asks for. */
const ASK = Buffer.from("o");

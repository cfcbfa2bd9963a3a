/**
 * An HTTP/2 stream as the interface's stream: a Duplex whose end is the stream's END_STREAM, whose
 * `destroy()` is a RST_STREAM, and whose peer reset or lost connection is an `error` with the code,
 * never a clean end. Reading pauses the HTTP/2 stream when this side's buffer is full, so Node's
 * and Bun's HTTP/2 stop returning window credit and the peer is held back (flow control).
 *
 * @module
 */
import type { Http2Stream } from "node:http2";
import { Duplex } from "node:stream";
import { STREAM_CANCELLED } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { QuicStream } from "../types.ts";

/** What a stream asks of its connection. */
export interface StreamOwner {
  /** Why the connection ended, once it has: every stream still open then fails with it. */
  lostReason(): QuicError | undefined;
  /** The stream is finished with. */
  forget(stream: TcpStream): void;
  /** Stream bytes that left or arrived, for the connection's figures and its idle deadline. */
  carried(direction: "sent" | "received", bytes: number): void;
}

const HIGH_WATER_MARK = 256 * 1024;
/** How long a peer's end waits for a reset that may follow it (see the constructor). */
const END_SETTLE_MS = 20;

/** A bidirectional stream of the TCP transport. */
export class TcpStream extends Duplex implements QuicStream {
  readonly #inner: Http2Stream;
  readonly #owner: StreamOwner;
  /** This side reset the stream: its close is no news. */
  #resetLocally = false;

  constructor(inner: Http2Stream, owner: StreamOwner) {
    super({ allowHalfOpen: true, highWaterMark: HIGH_WATER_MARK });
    this.#inner = inner;
    this.#owner = owner;
    inner.on("data", (chunk: Buffer) => {
      owner.carried("received", chunk.length);
      if (!this.push(chunk)) inner.pause();
    });
    // Node's and Bun's HTTP/2 end a stream's readable side before they say it was reset: the
    // RST_STREAM's code, "aborted" and the error come after "end" (Bun in the same turn, Node a
    // turn or two later). The end is passed on once no reset followed it for a moment, or a reset
    // would reach the reader as a clean end.
    inner.once("end", () => {
      const settle = () => {
        clearTimeout(timer);
        inner.off("aborted", settle);
        inner.off("close", settle);
        this.#innerEnded();
      };
      const timer = setTimeout(settle, END_SETTLE_MS);
      inner.once("aborted", settle);
      inner.once("close", settle);
    });
    // The close that follows says what happened, with the peer's code.
    inner.on("error", () => {});
    inner.once("close", () => this.#innerClosed());
  }

  get id(): number {
    return this.#inner.id ?? -1;
  }

  /** Bytes HTTP/2 holds for this stream that the reader has not taken yet (bounded by the window). */
  get heldForReader(): number {
    return this.#inner.readableLength;
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    // The callback waits for HTTP/2 to be done with the buffers: a writer may free one after it.
    const last = chunks.length - 1;
    chunks.forEach(({ chunk }, index) => {
      this.#owner.carried("sent", chunk.length);
      this.#inner.write(chunk, index === last ? (err?: Error | null) => callback(err ? this.#failure(err) : null) : undefined);
    });
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.#inner.destroyed) callback(this.#failure());
    else this.#inner.end(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Node destroys a finished Duplex by itself (autoDestroy), maybe before HTTP/2 has closed the
    // stream after both END_STREAMs: that is no abort, and a RST_STREAM then would fail the peer.
    const finished = error === null && this.readableEnded && this.writableFinished;
    if (!finished && !this.#inner.closed && !this.#inner.destroyed) {
      this.#resetLocally = true;
      this.#inner.close(STREAM_CANCELLED);
    }
    this.#owner.forget(this);
    callback(error);
  }

  /** Why this stream cannot carry data: the connection's end, or the peer's reset. */
  #failure(cause?: Error): QuicError {
    const lost = this.#owner.lostReason();
    if (lost) return lost;
    const code = this.#inner.rstCode;
    if (code !== undefined && code !== 0) return new QuicError(`stream ${this.id} reset by peer (code ${code})`, { code });
    if (cause) return new QuicError(`stream ${this.id}: ${cause.message}`, { cause });
    return new QuicError(`stream ${this.id} stopped by peer`);
  }

  #innerEnded(): void {
    if (this.destroyed) return;
    const code = this.#inner.rstCode;
    if (this.#inner.aborted || (code !== undefined && code !== 0) || this.#owner.lostReason()) this.destroy(this.#failure());
    else this.push(null);
  }

  #innerClosed(): void {
    this.#owner.forget(this);
    if (this.#resetLocally || this.destroyed) return;
    // A clean close follows both END_STREAMs; the Duplex then finishes once its reader has read.
    const clean = this.#inner.rstCode === 0 && this.#inner.readableEnded && this.#inner.writableFinished;
    if (!clean || this.#owner.lostReason()) this.destroy(this.#failure());
  }
}

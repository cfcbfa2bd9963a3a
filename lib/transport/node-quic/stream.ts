/**
 * A `node:quic` stream as a `node:stream` Duplex: the async iterator feeds the readable side as
 * fast as it is read (so flow control holds back a peer we do not read), and the writer's
 * synchronous writes with its drain signal carry backpressure the other way.
 *
 * @module
 */

// @ts-ignore: Deno ships no node:quic (nor its types); only Bun loads this engine.
import { QuicError as NodeQuicError, type QuicStream as NodeStream } from "node:quic";
import { Duplex } from "node:stream";
import { STREAM_CANCELLED } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { QuicStream } from "../types.ts";
import { finReceived, unreadBytes } from "./bun.ts";

/** The writer's drain signal: a promise that settles once it takes data again, or null if it does now. */
const DRAIN = Symbol.for("Stream.drainableProtocol");
/** Largest piece handed to the writer at once, so a big chunk never exceeds its buffer by itself. */
const WRITE_SLICE = 64 * 1024;
const WRITER_BUFFER = 256 * 1024;

/** Bun's writer: the typings lack its `desiredSize` and drain signal. */
type Writer = NodeStream["writer"] & { readonly desiredSize: number | null; [DRAIN]?: () => Promise<void> | null };

/** What a stream asks of its connection. */
export interface StreamOwner {
  readonly peer: string;
  /**
   * Why the connection ended, once it has: node:quic ends the streams of a dead connection as if
   * the peer had sent a FIN, so every end is checked against this before it counts as clean.
   */
  lostReason(): QuicError | undefined;
  /** A stream ended without its FIN: node:quic is tearing the connection down. */
  lost(stream: NodeQuicStream): void;
  /** The stream is finished with. */
  forget(stream: NodeQuicStream): void;
}

/** Describes a node:quic stream error the way the quiche engine does (`reset by peer (code N)`). */
function streamError(err: unknown, id: number): QuicError {
  const error = err as { message?: string; code?: string; errorCode?: bigint };
  const message = String(error?.message ?? err);
  const code = error?.errorCode ?? /error code (\d+)/.exec(message)?.[1];
  if (error?.code === "ERR_QUIC_STREAM_RESET" || /reset/i.test(message)) {
    return new QuicError(`stream ${id} reset by peer (code ${code ?? 0})`, { code: Number(code ?? 0) });
  }
  if (/Invalid state: Failed/.test(message)) return new QuicError(`stream ${id} stopped by peer`, { cause: err });
  return new QuicError(`stream ${id}: ${message}`, { cause: err });
}

/** A bidirectional stream on a node:quic session. */
export class NodeQuicStream extends Duplex implements QuicStream {
  readonly #stream: NodeStream;
  readonly #owner: StreamOwner;
  readonly #iterator: AsyncIterator<Uint8Array[]>;
  #writer: Writer | undefined;
  #reading = false;
  #readDone = false;

  constructor(stream: NodeStream, owner: StreamOwner) {
    // The writer's native buffer keeps a writer busy; a small queue before it keeps 1,000 stalled
    // tunnels from holding 256 KiB more each (as the quiche engine's does).
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 64 * 1024 });
    this.#stream = stream;
    this.#owner = owner;
    this.#iterator = stream[Symbol.asyncIterator]();
    // Its rejection is how a reset shows up there too; the iterator reports it to us.
    stream.closed.catch(() => {});
  }

  get id(): number {
    return this.#stream.id === null ? -1 : Number(this.#stream.id);
  }

  /** Bytes node:quic holds for this stream that it has not handed to us yet. */
  get heldForReader(): number {
    return unreadBytes(this.#stream);
  }

  /** Bytes node:quic's writer holds for this stream that the peer has not been sent yet. */
  get heldForWriter(): number {
    const desired = this.#writer?.desiredSize;
    return desired === undefined || desired === null ? 0 : Math.max(0, WRITER_BUFFER - desired);
  }

  override _read(): void {
    if (!this.#reading && !this.#readDone) void this.#pump();
  }

  async #pump(): Promise<void> {
    this.#reading = true;
    try {
      for (;;) {
        const { value, done } = await this.#iterator.next();
        // Destroying this side ends the iterator too: that says nothing about the connection.
        if (this.destroyed) return;
        if (done) {
          this.#readDone = true;
          // A dead connection ends its streams' readers as a FIN does: that is an error, not an end.
          if (finReceived(this.#stream)) this.push(null);
          else this.#owner.lost(this);
          return;
        }
        let more = true;
        for (const chunk of value) more = this.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if (!more || this.destroyed) return;
      }
    } catch (err) {
      this.#readDone = true;
      this.destroy(this.#owner.lostReason() ?? streamError(err, this.id));
    } finally {
      this.#reading = false;
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#writeFrom(chunk, 0, callback);
  }

  #writeFrom(chunk: Buffer, offset: number, callback: (err?: Error | null) => void): void {
    let writer: Writer;
    try {
      writer = this.#openWriter();
      while (offset < chunk.length) {
        const slice = chunk.subarray(offset, offset + WRITE_SLICE);
        if (!writer.writeSync(slice)) break;
        offset += slice.length;
      }
    } catch (err) {
      callback(streamError(err, this.id));
      return;
    }
    if (offset >= chunk.length) {
      callback();
      return;
    }
    if (writer.desiredSize === null) {
      callback(this.#owner.lostReason() ?? new QuicError(`stream ${this.id} stopped by peer`));
      return;
    }
    const drained = writer[DRAIN]?.() ?? null;
    if (drained === null) {
      setImmediate(() => this.#writeFrom(chunk, offset, callback));
      return;
    }
    drained.then(
      () => this.#writeFrom(chunk, offset, callback),
      (err: unknown) => callback(this.#owner.lostReason() ?? streamError(err, this.id)),
    );
  }

  override _final(callback: (err?: Error | null) => void): void {
    let writer: Writer;
    try {
      writer = this.#openWriter();
    } catch (err) {
      callback(streamError(err, this.id));
      return;
    }
    writer.end().then(
      () => callback(),
      (err: unknown) => callback(this.#owner.lostReason() ?? streamError(err, this.id)),
    );
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const finished = this.#readDone && this.writableFinished;
    if (!finished && !this.#stream.destroyed) {
      // Resets both directions (RESET_STREAM and STOP_SENDING) with our cancel code.
      this.#stream.destroy(new NodeQuicError("stream cancelled", { errorCode: BigInt(STREAM_CANCELLED), type: "application" }));
    }
    this.#owner.forget(this);
    callback(err);
  }

  #openWriter(): Writer {
    if (this.#writer === undefined) {
      this.#stream.highWaterMark = WRITER_BUFFER;
      this.#writer = this.#stream.writer as Writer;
    }
    return this.#writer;
  }
}

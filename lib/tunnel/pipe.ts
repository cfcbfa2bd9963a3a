/**
 * Bidirectional copy between two duplex streams, like the Go original's `pipe.Request`, but with
 * half-close: one side's end-of-stream is passed on while the other direction keeps flowing, and an
 * error on either side ends the other as an error too (a TCP reset, a QUIC stream reset), never as a
 * clean end that a client could take for a complete transfer.
 *
 * @module
 */
import type { Duplex } from "node:stream";
import { type BufferBudget, type BufferBudgetError, engineHeld, engineHeldForWriter, type Stall } from "./budget.ts";

/** What a finished {@link pipeBoth} moved, and the first error that ended it early. */
export interface PipeResult {
  /** Bytes copied from the first stream to the second. */
  sent: number;
  /** Bytes copied from the second stream to the first. */
  received: number;
  /** The first error of either side; both sides are destroyed when there is one. */
  error?: Error;
}

/** Chunks at least this large are freed by {@link release}; small ones are cheap for the collector. */
const RELEASE_MIN_BYTES = 16 * 1024;

/**
 * Frees a chunk's memory as soon as the writer has taken it, instead of whenever the garbage
 * collector runs: sockets hand over chunks of up to 512 KiB, and at tunnel speeds the ones waiting
 * for collection made up 15-20 MB of a process's memory. Only a chunk that spans its whole
 * ArrayBuffer is freed, because then no other view can share that memory.
 */
function release(chunk: Buffer): void {
  const { buffer } = chunk;
  if (
    chunk.byteLength >= RELEASE_MIN_BYTES &&
    chunk.byteOffset === 0 &&
    chunk.byteLength === buffer.byteLength &&
    buffer instanceof ArrayBuffer
  ) {
    buffer.transfer(0);
  }
}

/**
 * Ends `stream` as an error its peer can see: a TCP socket is reset (RST) rather than closed with a
 * FIN, a QUIC stream is reset by `destroy()` itself.
 */
export function abort(stream: Duplex): void {
  if (stream.destroyed) return;
  const socket = stream as Duplex & { resetAndDestroy?: () => void };
  if (typeof socket.resetAndDestroy === "function") {
    try {
      socket.resetAndDestroy();
      return;
    } catch {
      // not a plain TCP handle (a TLS socket, a socket not yet connected): destroy it instead
    }
  }
  stream.destroy();
}

/** Copies `from` to `to`, pausing while `to` is full; a pause is a stall the budget watches. */
function forward(
  from: Duplex,
  to: Duplex,
  options: { count: (n: number) => void; active: () => void; budget?: BufferBudget; abort: (err: Error) => void },
): void {
  let waiting = false;
  const stall: Stall = {
    held: () => to.writableLength + engineHeldForWriter(to) + from.readableLength + engineHeld(from),
    abort: (err: BufferBudgetError) => options.abort(err),
  };
  const resume = () => {
    waiting = false;
    options.budget?.resume(stall);
    from.resume();
  };
  from.on("data", (chunk: Buffer) => {
    options.count(chunk.length);
    // The chunk came from `from` and only this pipe holds it; the writer is done with it once its
    // write callback has run. That `to` took it is activity too: a slow reader still taking bytes
    // keeps the tunnel alive while `from` waits.
    const taken = () => {
      release(chunk);
      options.active();
    };
    if (!to.write(chunk, taken) && !waiting) {
      waiting = true;
      from.pause();
      to.once("drain", resume);
      options.budget?.stall(stall);
    }
  });
  // A FIN that came right behind a request head has already ended the paused stream: a stream
  // emits "end" once nothing is buffered, paused or not, and would not emit it again.
  if (from.readableEnded) to.end();
  else from.once("end", () => to.end());
  for (const stream of [from, to]) stream.once("close", () => options.budget?.ended(stall));
  from.resume();
}

/** Options for {@link pipeBoth}. */
export interface PipeOptions {
  /** Tear both sides down when no byte moved either way for this long (0 or absent: never). */
  idleTimeoutMs?: number;
  /**
   * Once one direction has ended, tear both down when no byte moved for this long (0 or absent:
   * never). A half-closed tunnel that carries nothing is usually one whose other end is gone
   * without a word (a chain of tunnels into each other, a peer that vanished mid-close).
   */
  halfCloseTimeoutMs?: number;
  /** Bounds what a stalled direction may hold, together with every other tunnel's (absent: no bound). */
  budget?: BufferBudget;
}

/** Which halves of a stream have ended, for the message of a tunnel ended while quiet. */
function ends(stream: Duplex): string {
  const read = stream.readableEnded ? "read to its end" : "still readable";
  const write = stream.writableEnded ? "ended its writes" : "still writable";
  return `${read}, ${write}`;
}

/**
 * Copies `a` to `b` and `b` to `a` until both directions have ended and both streams closed.
 * An error or an abrupt close of either stream destroys the other. Never rejects.
 */
export function pipeBoth(a: Duplex, b: Duplex, options: PipeOptions = {}): Promise<PipeResult> {
  const result: PipeResult = { sent: 0, received: 0 };
  let lastActivity = performance.now();
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let halfClosed = false;
  /** How long the tunnel may stay quiet now: the idle limit, shorter once half-closed. */
  const quietLimit = () => {
    const limits = [options.idleTimeoutMs ?? 0, halfClosed ? (options.halfCloseTimeoutMs ?? 0) : 0].filter((ms) => ms > 0);
    return limits.length > 0 ? Math.min(...limits) : 0;
  };
  const checkIdle = () => {
    const limit = quietLimit();
    const quiet = performance.now() - lastActivity;
    if (quiet < limit) {
      idleTimer = setTimeout(checkIdle, limit - quiet);
      return;
    }
    const what = halfClosed && limit === options.halfCloseTimeoutMs ? "tunnel half-closed and idle" : "tunnel idle";
    result.error ??= new Error(`${what} for ${limit} ms (first side ${ends(a)}, second side ${ends(b)})`);
    abort(a);
    abort(b);
  };
  const arm = () => {
    clearTimeout(idleTimer);
    idleTimer = quietLimit() > 0 ? setTimeout(checkIdle, Math.max(0, quietLimit() - (performance.now() - lastActivity))) : undefined;
  };
  arm();
  const onHalfClose = () => {
    if (halfClosed) return;
    halfClosed = true;
    arm();
  };
  for (const stream of [a, b]) {
    if (stream.readableEnded) onHalfClose();
    else stream.once("end", onHalfClose);
  }
  return new Promise((resolve) => {
    let open = 2;
    const onClose = (stream: Duplex, other: Duplex) => {
      const clean = stream.readableEnded && stream.writableFinished;
      if (!clean) abort(other);
      if (--open === 0) {
        clearTimeout(idleTimer);
        resolve(result);
      }
    };
    const onError = (err: Error) => {
      result.error ??= err;
      abort(a);
      abort(b);
    };
    for (const [stream, other] of [
      [a, b],
      [b, a],
    ]) {
      stream.on("error", onError);
      // A stream torn down before the pipe started will not emit "close" again.
      if (stream.closed) queueMicrotask(() => onClose(stream, other));
      else stream.once("close", () => onClose(stream, other));
    }
    const active = () => {
      lastActivity = performance.now();
    };
    const moved = (direction: "sent" | "received") => (n: number) => {
      result[direction] += n;
      active();
    };
    forward(a, b, { count: moved("sent"), active, budget: options.budget, abort: onError });
    forward(b, a, { count: moved("received"), active, budget: options.budget, abort: onError });
  });
}

/**
 * The bytes a role holds on behalf of readers that do not read, bounded per process. A tunnel
 * whose reader keeps up holds almost nothing; one whose reader stalls holds what the pipe had read
 * before it paused (its source's buffer, its destination's write queue) and what the QUIC engine
 * keeps for it. Flow control stops the growth of each one, but not of a thousand: one chunk of a
 * socket is up to 512 KiB, and Bun's `node:quic` keeps reading a stream whatever its reader does.
 * So the stalled directions are watched while there are any, and when together they hold more
 * than the budget, or one holds more than its share, the one holding the most is ended with an error.
 * What an ended or departed stall held is garbage then; `onFreed` hears of it, so that the process
 * can give it back (lib/ops/memory.ts) before the next flood of it.
 *
 * @module
 */

/** A pipe direction whose destination stopped taking bytes. */
export interface Stall {
  /** Bytes held for its reader now. */
  held(): number;
  /** Ends the tunnel: its reader took too little for too long. */
  abort(error: BufferBudgetError): void;
}

/** Why a tunnel was ended by the {@link BufferBudget}. */
export class BufferBudgetError extends Error {
  override name = "BufferBudgetError";
}

/** How often stalled directions are measured, while there are any. */
const CHECK_MS = 100;

/**
 * Streams whose engine holds bytes of their own: for a reader that has not taken them (Bun's
 * `node:quic`, quiche), or written and not yet sent (`node:quic`'s writer buffer).
 */
interface EngineHeld {
  readonly heldForReader?: number;
  readonly heldForWriter?: number;
}

/** Bytes the engine behind `stream` holds for its reader, when it says. */
export function engineHeld(stream: object): number {
  return (stream as EngineHeld).heldForReader ?? 0;
}

/** Bytes the engine behind `stream` holds that were written to it and not sent yet, when it says. */
export function engineHeldForWriter(stream: object): number {
  return (stream as EngineHeld).heldForWriter ?? 0;
}

/** The budget of one process; see the module documentation. */
export class BufferBudget {
  readonly #limit: number;
  readonly #share: number;
  /** Stalled directions, oldest stall first (a Map keeps insertion order), with what each held when last measured. */
  readonly #stalls = new Map<Stall, number>();
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #onFreed: (() => void) | undefined;
  /** Bytes that ended or departed stalls held, since `onFreed` last ran. */
  #freed = 0;
  /** Tunnels ended by this budget so far. */
  aborted = 0;

  /**
   * `limit` bytes for the whole process (0: no limit); one tunnel may hold half of it. `onFreed`
   * runs each time stalls that were ended, or closed while stalled, have together held an eighth
   * of the limit: enough to be worth giving back, rarely enough to cost nothing while none ends.
   */
  constructor(limit: number, options: { onFreed?: () => void } = {}) {
    this.#limit = limit;
    this.#share = Math.floor(limit / 2);
    this.#onFreed = options.onFreed;
  }

  /** Directions stalled now. */
  get stalled(): number {
    return this.#stalls.size;
  }

  /** The budget in bytes (0: none). */
  get limit(): number {
    return this.#limit;
  }

  /** Watches `stall` until {@link resume}; measures at once, since a new stall is when memory grows. */
  stall(stall: Stall): void {
    if (this.#limit === 0) return;
    this.#stalls.set(stall, 0);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.check(), CHECK_MS);
      this.#timer.unref?.();
    }
    this.check();
  }

  /** `stall` moves again. */
  resume(stall: Stall): void {
    if (!this.#stalls.delete(stall) || this.#stalls.size > 0) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** `stall` has ended (its tunnel closed); if it was still stalled, what it held is garbage now. */
  ended(stall: Stall): void {
    const held = this.#stalls.get(stall);
    if (held === undefined) return;
    this.resume(stall);
    this.#free(held);
  }

  /**
   * Ends every stalled direction over its share, then those holding the most (the longest stalled
   * first among equals) until the rest fit the budget. Not the longest stalled first: in a flood
   * of readers that never read, every direction stalls again each time its peer takes a little,
   * and a fresh tunnel, whose answer waits behind them all for a moment, was as old a stall as
   * any and was ended with its first 64 KiB, while the flood's held two to three times that.
   */
  check(): void {
    let total = 0;
    for (const stall of this.#stalls.keys()) {
      const bytes = stall.held();
      this.#stalls.set(stall, bytes);
      total += bytes;
    }
    if (total <= this.#limit && [...this.#stalls.values()].every((bytes) => bytes <= this.#share)) return;
    // A stable sort: among equals, the order of stalling.
    for (const [stall, bytes] of [...this.#stalls].sort((a, b) => b[1] - a[1])) {
      if (bytes <= this.#share && total <= this.#limit) break;
      total -= bytes;
      this.resume(stall);
      this.aborted++;
      const why =
        bytes > this.#share
          ? `${bytes} bytes wait for a reader that does not keep up, over one tunnel's share (half of --max-buffered ${this.#limit})`
          : `${bytes} bytes wait for a reader that does not keep up, and stalled tunnels hold more than --max-buffered ${this.#limit}`;
      stall.abort(new BufferBudgetError(why));
      this.#free(bytes);
    }
  }

  #free(bytes: number): void {
    this.#freed += bytes;
    if (this.#freed < this.#limit / 8) return;
    this.#freed = 0;
    this.#onFreed?.();
  }
}

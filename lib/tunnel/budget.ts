/**
 * The bytes a role holds on behalf of readers that do not read, bounded per process. A tunnel
 * whose reader keeps up holds almost nothing; one whose reader stalls holds what the pipe had read
 * before it paused (its source's buffer, its destination's write queue) and what the QUIC engine
 * keeps for it. Flow control stops the growth of each one, but not of a thousand: one chunk of a
 * socket is up to 512 KiB, and Bun's `node:quic` keeps reading a stream whatever its reader does.
 * So the stalled directions are watched while there are any, and when together they hold more
 * than the budget, or one holds more than its share, the one stalled longest is ended with an error.
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

/** Streams whose engine holds bytes a reader has not taken (Bun's `node:quic`, quiche). */
interface EngineHeld {
  readonly heldForReader?: number;
}

/** Bytes the engine behind `stream` holds for its reader, when it says. */
export function engineHeld(stream: object): number {
  return (stream as EngineHeld).heldForReader ?? 0;
}

/** The budget of one process; see the module documentation. */
export class BufferBudget {
  readonly #limit: number;
  readonly #share: number;
  /** Stalled directions, oldest stall first (a Set keeps insertion order). */
  readonly #stalls = new Set<Stall>();
  #timer: ReturnType<typeof setInterval> | undefined;
  /** Tunnels ended by this budget so far. */
  aborted = 0;

  /** `limit` bytes for the whole process (0: no limit); one tunnel may hold half of it. */
  constructor(limit: number) {
    this.#limit = limit;
    this.#share = Math.floor(limit / 2);
  }

  /** The budget in bytes (0: none). */
  get limit(): number {
    return this.#limit;
  }

  /** Watches `stall` until {@link resume}; measures at once, since a new stall is when memory grows. */
  stall(stall: Stall): void {
    if (this.#limit === 0) return;
    this.#stalls.add(stall);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.check(), CHECK_MS);
      this.#timer.unref?.();
    }
    this.check();
  }

  /** `stall` moves again (or ended). */
  resume(stall: Stall): void {
    if (!this.#stalls.delete(stall) || this.#stalls.size > 0) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Ends every stalled direction over its share, then the longest stalled until the rest fit the
   * budget: a reader that never reads stalls for good, one that reads slowly stalls again and
   * again but each time anew.
   */
  check(): void {
    const measured = [...this.#stalls].map((stall) => ({ stall, bytes: stall.held() }));
    let total = measured.reduce((sum, { bytes }) => sum + bytes, 0);
    for (const { stall, bytes } of measured) {
      if (bytes <= this.#share && total <= this.#limit) continue;
      total -= bytes;
      this.resume(stall);
      this.aborted++;
      const why =
        bytes > this.#share
          ? `${bytes} bytes wait for a reader that does not keep up, over one tunnel's share (half of --max-buffered ${this.#limit})`
          : `${bytes} bytes wait for a reader that does not keep up, and stalled tunnels hold more than --max-buffered ${this.#limit}`;
      stall.abort(new BufferBudgetError(why));
    }
  }
}

/**
 * Exponential reconnect backoff with jitter, capped, so that a fleet of agents does not hammer a
 * server that is down (the Go reference retries in a tight loop).
 *
 * @module
 */

/** Bounds of a {@link Backoff}. */
export interface BackoffOptions {
  /** First delay in ms. */
  minMs: number;
  /** Largest delay in ms. */
  maxMs: number;
  /** Random source in [0, 1), replaceable in tests. */
  random?: () => number;
}

/** Delays that double from `minMs` up to `maxMs`, each drawn uniformly from its upper half. */
export class Backoff {
  #attempt = 0;
  #options: BackoffOptions;

  constructor(options: BackoffOptions) {
    this.#options = options;
  }

  /** The delay before the next attempt; each call counts one failed attempt. */
  next(): number {
    const { minMs, maxMs, random = Math.random } = this.#options;
    const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    return Math.round(ceiling / 2 + random() * (ceiling / 2));
  }

  /** Starts over from `minMs`, after a connection that lasted. */
  reset(): void {
    this.#attempt = 0;
  }
}

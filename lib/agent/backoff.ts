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

/**
 * Longest wait before dialing again after reaching a server another connection holds
 * (Konnectivity's sync interval grows to 10 s likewise).
 */
export const DUPLICATE_BACKOFF_MAX_MS = 5_000;

/**
 * The delays of one seat's redials (lib/agent/connections.ts), by why it dials again. A failure
 * (no handshake, a lost connection) backs off up to `maxMs` (`--reconnect-max`). A duplicate, a
 * healthy server reached through a balancer's hash where another connection already holds it,
 * backs off only up to {@link DUPLICATE_BACKOFF_MAX_MS}: dialing again soon is how a restarted
 * replica is found, and a failure's backoff would keep it without agents for minutes.
 */
export class RedialBackoff {
  readonly #failures: Backoff;
  readonly #duplicates: Backoff;

  constructor(options: BackoffOptions) {
    this.#failures = new Backoff(options);
    this.#duplicates = new Backoff({ ...options, maxMs: Math.min(options.maxMs, DUPLICATE_BACKOFF_MAX_MS) });
  }

  /** The delay after a dial failed or a connection was lost. */
  failed(): number {
    return this.#failures.next();
  }

  /** The delay after reaching a server another connection holds: the path works, so failures start over. */
  duplicate(): number {
    this.#failures.reset();
    return this.#duplicates.next();
  }

  /** A connection reached a server of its own: duplicates start over. */
  connected(): void {
    this.#duplicates.reset();
  }

  /** A connection lasted: failures start over too. */
  lasted(): void {
    this.#failures.reset();
  }
}

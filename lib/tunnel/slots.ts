/**
 * Bookkeeping of open tunnels shared by the roles: the concurrency limit, the metrics every role
 * exposes (active, ended by outcome, bytes each way), and waiting for the last tunnel on shutdown.
 *
 * @module
 */
import { Counter, Gauge, type Registry } from "../ops/metrics.ts";
import type { PipeResult } from "./pipe.ts";

/** Open tunnels of one process. */
export class Tunnels {
  readonly #max: number;
  readonly #active: Gauge;
  readonly #ended: Counter;
  readonly #bytes: Counter;
  #count = 0;
  #idleWaiters: Array<() => void> = [];

  /** `max` 0 means no limit. */
  constructor(registry: Registry, options: { max: number }) {
    this.#max = options.max;
    this.#active = new Gauge(registry, "quic_tunnel_tunnels_active", "Tunnels open now.");
    this.#ended = new Counter(registry, "quic_tunnel_tunnels_total", "Tunnels ended or refused, by outcome.");
    this.#bytes = new Counter(
      registry,
      "quic_tunnel_bytes_total",
      "Bytes carried, by direction (up: client to target, down: target to client).",
    );
  }

  /** Tunnels open now. */
  get count(): number {
    return this.#count;
  }

  /** True when one more tunnel would exceed the limit. */
  get full(): boolean {
    return this.#max > 0 && this.#count >= this.#max;
  }

  /** The limit, for messages. */
  get max(): number {
    return this.#max;
  }

  /** Counts a tunnel refused before it carried anything (`no_agent`, `over_limit`, `denied`, ...). */
  refused(outcome: string): void {
    this.#ended.inc({ outcome });
  }

  /** Counts `piping` as open until it settles; `up` is the direction of the first stream to the second. */
  track(piping: Promise<PipeResult>): Promise<PipeResult> {
    this.#count++;
    this.#active.set(this.#count);
    return piping.then((result) => {
      this.#count--;
      this.#active.set(this.#count);
      this.#ended.inc({ outcome: result.error ? "error" : "ok" });
      this.#bytes.inc({ direction: "up" }, result.sent);
      this.#bytes.inc({ direction: "down" }, result.received);
      if (this.#count === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
      return result;
    });
  }

  /** Resolves true when no tunnel is open, or false after `timeoutMs`. */
  whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.#count === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}

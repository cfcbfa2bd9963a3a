/**
 * Admission of peers still in their handshake: a cap on them overall and per source address, so
 * that strangers cannot make a role keep unbounded state, or take every slot from one address.
 * The quiche engine admits QUIC handshakes with it; the server, CONNECT clients still sending
 * their request head.
 *
 * @module
 */
import type { HandshakeLimits } from "./transport/types.ts";

/** Defaults of {@link HandshakeLimits}. */
const DEFAULT_HANDSHAKE_LIMITS: Readonly<HandshakeLimits> = { maxHandshakes: 1024, maxHandshakesPerAddress: 64 };

/** Why a handshake was not admitted. */
export type AdmissionRefusal = "handshake_limit" | "address_limit";

/** Counts handshakes under way, overall and per source address. */
export class HandshakeAdmission {
  readonly #limits: HandshakeLimits;
  readonly #busyAt: number;
  readonly #byAddress = new Map<string, number>();
  #count = 0;

  /**
   * `busyAt`: the per-address cap applies only once this many are under way (default 0: always),
   * so that one client's burst passes while nobody else is waiting.
   */
  constructor(limits: Partial<HandshakeLimits> = {}, options: { busyAt?: number } = {}) {
    this.#limits = { ...DEFAULT_HANDSHAKE_LIMITS, ...limits };
    this.#busyAt = options.busyAt ?? 0;
  }

  /** Handshakes under way now. */
  get count(): number {
    return this.#count;
  }

  /**
   * Admits a handshake from `address` and returns a function that ends it (idempotent), or the
   * reason it was refused.
   */
  admit(address: string): (() => void) | AdmissionRefusal {
    if (this.#count >= this.#limits.maxHandshakes) return "handshake_limit";
    const fromAddress = this.#byAddress.get(address) ?? 0;
    if (this.#count >= this.#busyAt && fromAddress >= this.#limits.maxHandshakesPerAddress) return "address_limit";
    this.#count++;
    this.#byAddress.set(address, fromAddress + 1);
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      this.#count--;
      const left = (this.#byAddress.get(address) ?? 1) - 1;
      if (left === 0) this.#byAddress.delete(address);
      else this.#byAddress.set(address, left);
    };
  }
}

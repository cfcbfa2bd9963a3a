/**
 * One lifecycle for the tunnels of every role. A tunnel takes its slot the moment its client
 * connection (server) or stream (agents) is accepted, before anything is read or dialed, and gives
 * it back exactly once when it ends: refused with a status, or carried to its end. Refusals,
 * outcomes, bytes and the log lines about them are written here, in one place.
 *
 * @module
 */
import type { Duplex } from "node:stream";
import type { Logger } from "../ops/log.ts";
import { type MemoryRelease, memoryRelease } from "../ops/memory.ts";
import { Counter, Gauge, Histogram, type Registry } from "../ops/metrics.ts";
import { BufferBudget, BufferBudgetError } from "./budget.ts";
import { replyAndClose } from "./connect.ts";
import { abort, type PipeOptions, type PipeResult, pipeBoth } from "./pipe.ts";

/** How a tunnel ended; the `outcome` label of `quic_tunnel_tunnels_total`. */
export type Outcome =
  | "ok"
  | "error"
  | "over_limit"
  | "no_agent"
  | "bad_request"
  | "timeout"
  | "denied"
  | "loop"
  | "dial_failed"
  | "draining"
  | "over_budget"
  | "aborted";

const OUTCOMES: readonly Outcome[] = [
  "ok",
  "error",
  "over_limit",
  "no_agent",
  "bad_request",
  "timeout",
  "denied",
  "loop",
  "dial_failed",
  "draining",
  "over_budget",
  "aborted",
];

/** Fields that give a tunnel's log lines their context (client, stream, agent, target ...). */
export type TunnelFields = Record<string, string | number | undefined>;

/** The open tunnels of one process: the limit, the metrics, and waiting for the last one. */
export class Tunnels {
  readonly #role: string;
  readonly #max: number;
  readonly #log: Logger;
  readonly #active: Gauge;
  readonly #ended: Counter;
  readonly #bytes: Counter;
  readonly #responses: Counter;
  readonly #durations: Histogram;
  readonly #budget: BufferBudget;
  readonly #release: MemoryRelease;
  #count = 0;
  #idleWaiters: Array<() => void> = [];

  /**
   * `role` names this side in refusals (`server`, `agent`); `max` 0 means no limit; `maxBuffered`
   * bounds the bytes held for readers that do not read (see {@link BufferBudget}; 0 or absent: none).
   */
  constructor(registry: Registry, options: { role: string; max: number; log: Logger; maxBuffered?: number }) {
    this.#role = options.role;
    this.#release = memoryRelease({
      quiet: () => this.#budget.stalled === 0,
      onRelease: ({ rssBeforeBytes, rssAfterBytes, ms }) =>
        this.#log.debug("released the memory of tunnels that did not read: resident {before} -> {after} MB in {ms} ms", {
          before: Math.round(rssBeforeBytes / 2 ** 20),
          after: Math.round(rssAfterBytes / 2 ** 20),
          ms: Math.round(ms),
        }),
    });
    this.#budget = new BufferBudget(options.maxBuffered ?? 0, { onFreed: () => this.#release.request() });
    this.#max = options.max;
    this.#log = options.log;
    this.#active = new Gauge(registry, "quic_tunnel_tunnels_active", "Tunnels open now, from accept to end.");
    this.#active.set(0);
    this.#ended = new Counter(registry, "quic_tunnel_tunnels_total", "Tunnels ended or refused, by outcome.");
    for (const outcome of OUTCOMES) this.#ended.inc({ outcome }, 0);
    this.#bytes = new Counter(
      registry,
      "quic_tunnel_bytes_total",
      "Bytes carried, by direction (up: client to target, down: target to client).",
    );
    for (const direction of ["up", "down"]) this.#bytes.inc({ direction }, 0);
    this.#responses = new Counter(registry, "quic_tunnel_connect_responses_total", "HTTP answers to CONNECT requests, by status code.");
    for (const code of [200, 400, 403, 405, 408, 431, 502, 503, 504, 508]) this.#responses.inc({ code }, 0);
    this.#durations = new Histogram(
      registry,
      "quic_tunnel_tunnel_duration_seconds",
      "How long tunnels that carried bytes lasted, from accept to end.",
      [0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400, 86400],
    );
  }

  /** Tunnels open now. */
  get count(): number {
    return this.#count;
  }

  /**
   * Starts the tunnel of a connection or stream just accepted, taking its slot. When the limit is
   * reached the peer is refused at once (503, or a reset where `http` is false) and undefined is
   * returned. `id` names the tunnel in its log lines: the client's address, or the stream.
   */
  open(peer: Duplex, options: { http: boolean; id: string; fields?: TunnelFields }): Tunnel | undefined {
    const tunnel = new Tunnel(this, peer, options);
    if (this.#max > 0 && this.#count >= this.#max) {
      tunnel.refuse("over_limit", 503, `${this.#role} tunnel limit (${this.#max}) reached`);
      return undefined;
    }
    this.#count++;
    this.#active.set(this.#count);
    tunnel.holdsSlot = true;
    return tunnel;
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

  /** @internal a tunnel ended: count it and free its slot. */
  ended(tunnel: Tunnel, outcome: Outcome, result: { status?: number; bytes?: PipeResult }): void {
    this.#ended.inc({ outcome });
    if (result.status !== undefined && tunnel.http) this.#responses.inc({ code: result.status });
    if (result.bytes) {
      this.#bytes.inc({ direction: "up" }, result.bytes.sent);
      this.#bytes.inc({ direction: "down" }, result.bytes.received);
      this.#durations.observe(tunnel.ageSeconds);
    }
    if (!tunnel.holdsSlot) return;
    this.#count--;
    this.#active.set(this.#count);
    if (this.#count === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
  }

  /** @internal the budget every tunnel's pipe shares. */
  get budget(): BufferBudget {
    return this.#budget;
  }

  /** @internal the logger tunnels write to. */
  get log(): Logger {
    return this.#log;
  }
}

/** One tunnel, from accept to end. */
export class Tunnel {
  /** True for the CONNECT roles: refusals are HTTP answers. False for passthrough: a reset. */
  readonly http: boolean;
  /** @internal set by {@link Tunnels.open} once the slot is taken. */
  holdsSlot = false;
  readonly #tunnels: Tunnels;
  readonly #peer: Duplex;
  readonly #fields: TunnelFields;
  readonly #started = performance.now();
  #ended = false;

  constructor(tunnels: Tunnels, peer: Duplex, options: { http: boolean; id: string; fields?: TunnelFields }) {
    this.#tunnels = tunnels;
    this.#peer = peer;
    this.http = options.http;
    this.#fields = { tunnel: options.id, ...options.fields };
    // Errors of the peer are reported where they matter: reading the head, dialing, piping.
    peer.on("error", () => {});
  }

  /** Seconds since the tunnel was accepted. */
  get ageSeconds(): number {
    return (performance.now() - this.#started) / 1000;
  }

  /** Adds context for this tunnel's log lines (target, agent, stream ...). */
  note(fields: TunnelFields): void {
    Object.assign(this.#fields, fields);
  }

  /**
   * Refuses the tunnel: answers `status` with `reason` (a reset for passthrough), logs it and frees
   * the slot. Refusals that say something about the peer are warnings; an `aborted` peer (it went
   * away on its own) is only a debug line.
   */
  refuse(outcome: Outcome, status: number, reason: string): void {
    if (!this.#end(outcome, { status })) return;
    const fields = { ...this.#fields, status: this.http ? status : undefined, outcome };
    if (outcome === "aborted") this.#tunnels.log.debug("tunnel {tunnel} refused: {reason}", { ...fields, reason });
    else this.#tunnels.log.warn("tunnel {tunnel} refused: {reason}", { ...fields, reason });
    if (this.http) replyAndClose(this.#peer, status, { reason });
    else abort(this.#peer);
  }

  /**
   * Carries the tunnel: pipes the peer and `other` both ways until both are done, then logs and
   * counts the result. `status` is the answer this side gave the CONNECT (the agent's 200), if it
   * gave one. Never rejects.
   */
  async carry(other: Duplex, options: PipeOptions & { status?: number } = {}): Promise<PipeResult> {
    const result = await pipeBoth(this.#peer, other, { ...options, budget: this.#tunnels.budget });
    const overBudget = result.error instanceof BufferBudgetError;
    if (this.#end(overBudget ? "over_budget" : result.error ? "error" : "ok", { status: options.status, bytes: result })) {
      const fields = { ...this.#fields, up: result.sent, down: result.received, ms: Math.round(performance.now() - this.#started) };
      if (overBudget) this.#tunnels.log.warn("tunnel {tunnel} ended: {error}", { ...fields, error: result.error });
      else if (result.error) this.#tunnels.log.debug("tunnel {tunnel} ended with error: {error}", { ...fields, error: result.error });
      else this.#tunnels.log.debug("tunnel {tunnel} closed", fields);
    }
    return result;
  }

  /** Ends the tunnel once: false when it had ended already. */
  #end(outcome: Outcome, result: { status?: number; bytes?: PipeResult }): boolean {
    if (this.#ended) return false;
    this.#ended = true;
    this.#tunnels.ended(this, outcome, result);
    return true;
  }
}

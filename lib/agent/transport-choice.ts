/**
 * Which transport an agent reaches its server over (`--transport`): QUIC (UDP, as the reference),
 * the TCP transport (TLS on TCP, through an HTTP proxy if one is configured), or auto: QUIC first,
 * TCP as soon as a QUIC handshake fails, and from then on TCP first, with QUIC tried again every
 * so often so that an agent whose network lets UDP through again goes back to it.
 *
 * @module
 */
import type { HostPort } from "../hostport.ts";
import type { QuicEngine } from "../transport/mod.ts";

/** One way to the server. */
export interface Route {
  /** As logs and metrics name it. */
  readonly name: "quic" | "tcp";
  readonly engine: QuicEngine;
  readonly server: HostPort;
  /** The HTTP proxy the TCP transport dials through. */
  readonly proxy?: URL;
  /**
   * The same way to another of the server's addresses (a seat's, lib/agent/connections.ts);
   * absent for a route to one fixed address (`--server-tcp`), which every seat dials.
   */
  readonly at?: (server: HostPort) => Route;
}

/** `--transport`. */
export type TransportMode = "auto" | "quic" | "tcp";

/** Options of {@link TransportChoice}. */
export interface TransportChoiceOptions {
  mode: TransportMode;
  quic: Route;
  /** Needed unless the mode is `quic`. */
  tcp?: Route;
  /** With `auto`, how often an agent on TCP tries QUIC again (jittered by a fifth either way). */
  probeMs: number;
}

/** The agent's transports and which it prefers now; see the module documentation. */
export class TransportChoice {
  readonly mode: TransportMode;
  readonly quic: Route;
  readonly tcp: Route | undefined;
  readonly #probeMs: number;
  #preferred: Route;

  constructor(options: TransportChoiceOptions) {
    if (options.mode !== "quic" && !options.tcp) throw new Error(`--transport ${options.mode} needs a TCP route`);
    this.mode = options.mode;
    this.quic = options.quic;
    this.tcp = options.tcp;
    this.#probeMs = options.probeMs;
    this.#preferred = options.mode === "tcp" ? (options.tcp as Route) : options.quic;
  }

  /** The routes to try for the next connection, in order: the preferred one, then (auto) the other. */
  routes(): Route[] {
    if (this.mode !== "auto") return [this.#preferred];
    return [this.#preferred, this.#preferred === this.quic ? (this.tcp as Route) : this.quic];
  }

  /** A connection over `route` worked: it comes first from now on. */
  connected(route: Route): void {
    this.#preferred = route;
  }

  /** Whether an agent connected over `route` should keep trying QUIC (auto, on TCP). */
  probes(route: Route): boolean {
    return this.mode === "auto" && route.name === "tcp";
  }

  /** The time until the next QUIC probe. */
  probeDelay(random = Math.random()): number {
    return Math.round(this.#probeMs * (0.8 + 0.4 * random));
  }
}

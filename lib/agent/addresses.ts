/**
 * The server addresses an agent dials (`--server`): each address given, and for a DNS name every
 * address it resolves to (a headless Service names each replica), looked up again every so often
 * so that replicas that come and go are followed. Seat `i` of the agent dials address `i` first
 * and the next ones after failed or duplicate attempts.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { formatHostPort, type HostPort } from "../hostport.ts";
import { dialAddress } from "../tunnel/address.ts";

/** How often names are looked up again. */
export const RESOLVE_EVERY_MS = 30_000;

/** Resolves a host name to its addresses, like `dns.lookup(host, { all: true })`. */
export type Resolve = (host: string) => Promise<string[]>;

const systemResolve: Resolve = async (host) => (await lookup(host, { all: true })).map((entry) => entry.address);

/** Options of {@link ServerAddresses}. */
export interface ServerAddressesOptions {
  resolve?: Resolve;
}

/** The addresses behind `--server`; see the module documentation. */
export class ServerAddresses {
  readonly #given: readonly HostPort[];
  readonly #options: ServerAddressesOptions;
  #current: HostPort[];
  #timer: ReturnType<typeof setInterval> | undefined;
  #onChange: ((count: number) => void) | undefined;

  constructor(given: readonly HostPort[], options: ServerAddressesOptions = {}) {
    this.#given = given;
    this.#options = options;
    this.#current = [...given];
  }

  /** How many addresses there are now. */
  get size(): number {
    return this.#current.length;
  }

  /** How many entries `--server` gave, each a name or an address. */
  get given(): number {
    return this.#given.length;
  }

  /** The addresses now, for logs. */
  get list(): readonly HostPort[] {
    return this.#current;
  }

  /** The address for a seat's `attempt`-th dial. */
  pick(seat: number, attempt: number): HostPort {
    return this.#current[(seat + attempt) % this.#current.length];
  }

  /**
   * Looks the names up now and then every {@link RESOLVE_EVERY_MS} until `stop`; `onChange` hears
   * of every lookup that changed how many addresses there are.
   */
  async start(onChange?: (count: number) => void): Promise<void> {
    this.#onChange = onChange;
    await this.refresh();
    this.#timer = setInterval(() => void this.refresh(), RESOLVE_EVERY_MS);
    this.#timer.unref?.();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /**
   * Looks every name up again. A name that does not resolve is kept as given, so that dialing it
   * fails with the engine's own words; a name's addresses are sorted, so that seats keep theirs.
   */
  async refresh(): Promise<void> {
    const resolve = this.#options.resolve ?? systemResolve;
    const expanded = await Promise.all(
      this.#given.map(async (address) => {
        if (dialAddress(address.host)) return [address];
        const ips = await resolve(address.host).catch(() => []);
        return ips.length === 0 ? [address] : [...new Set(ips)].sort().map((host) => ({ host, port: address.port }));
      }),
    );
    const next = dedupe(expanded.flat());
    const changed = next.length !== this.#current.length;
    this.#current = next;
    if (changed) this.#onChange?.(next.length);
  }
}

function dedupe(addresses: HostPort[]): HostPort[] {
  const seen = new Set<string>();
  return addresses.filter((address) => {
    const key = formatHostPort(address);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

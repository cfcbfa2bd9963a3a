/**
 * Refusing a CONNECT back into the tunnel server itself (508 Loop Detected). Without it, one client
 * can send a pipeline of `CONNECT <server's listener>` heads and make the tunnel open tunnels to
 * itself, each carrying the rest of the pipeline inward, until the server's tunnel limit is taken.
 *
 * Two kinds of target are loops:
 * - the unspecified address (`0.0.0.0`, `0`, `::`, `::ffff:0.0.0.0`, all of 0.0.0.0/8): never a
 *   destination, the kernel dials it as this host, so whatever listens here answers; refused always,
 *   whichever server this agent serves;
 * - the server's own client listeners, which our server tells our agents (lib/control.ts): a specific
 *   address by itself; a wildcard one also at every address of the server's host (it announces
 *   them), at the server's address as this agent sees it, and at any address of this machine,
 *   loopback included, when the server runs here too.
 *
 * @module
 */
import { formatHostPort, type HostPort } from "../hostport.ts";
import { type DialAddress, dialAddress, interfaceAddresses } from "../tunnel/address.ts";

/**
 * How long the list of this machine's addresses is reused. Reading it (`networkInterfaces()` and
 * parsing every address) took 0.2 ms of each CONNECT's set-up; an address added to an interface
 * counts as local within this time.
 */
const LOCAL_ADDRESSES_TTL_MS = 1_000;
let localCache: { addresses: Set<string>; until: number } | undefined;

/** The addresses of this machine's interfaces, loopback included. */
function localAddresses(): Set<string> {
  const now = performance.now();
  if (!localCache || now >= localCache.until) {
    const addresses = new Set(["127.0.0.1", "::1", ...interfaceAddresses().map((address) => address.ip)]);
    localCache = { addresses, until: now + LOCAL_ADDRESSES_TTL_MS };
  }
  return localCache.addresses;
}

function isLocal(address: DialAddress, local: Set<string>): boolean {
  return local.has(address.ip) || address.parsed.range() === "loopback";
}

/** What an agent knows about one server: its listeners and its address. */
export interface ServerInfo {
  /** The server's client listeners, or undefined when it did not say (the reference's server). */
  listeners: readonly HostPort[] | undefined;
  /** The server's IP as this agent reaches it over QUIC. */
  host: string;
  /** Settles once the server has answered the agent's hello, or did not in time: `listeners` is final. */
  announced: Promise<void>;
}

/** True when dialing `address`:`port` would reach one of the server's own client listeners. */
export function leadsToServer(address: DialAddress, port: number, server: Pick<ServerInfo, "listeners" | "host">): boolean {
  if (!server.listeners) return false;
  const local = localAddresses();
  const serverAddress = dialAddress(server.host);
  const serverIsLocal = serverAddress !== undefined && isLocal(serverAddress, local);
  return server.listeners.some((listener) => {
    if (listener.port !== port) return false;
    const bound = dialAddress(listener.host);
    if (bound === undefined) return false;
    const wildcard = bound.parsed.range() === "unspecified";
    if (!wildcard && bound.ip === address.ip) return true;
    // A listener on a wildcard (or on this machine's loopback) is reached at the server's address,
    // and, when the server runs on this machine, at any local address.
    if (wildcard && serverAddress?.ip === address.ip) return true;
    return serverIsLocal && (wildcard || bound.parsed.range() === "loopback") && isLocal(address, local);
  });
}

/**
 * Why dialing `address` (the target `target` as resolved) would loop back into this host or the
 * tunnel server, for the 508 answer; undefined when it would not.
 */
export function loopReason(address: DialAddress, target: HostPort, server: Pick<ServerInfo, "listeners" | "host">): string | undefined {
  const named = formatHostPort(target);
  const as = address.ip === target.host ? "" : ` (${address.ip})`;
  if (address.parsed.range() === "unspecified") {
    return `${named}${as} is an unspecified address (0.0.0.0/8, ::), which is dialed as this host itself`;
  }
  if (leadsToServer(address, target.port, server)) return `${named}${as} is the tunnel server's own client listener`;
  return undefined;
}

/**
 * Refusing a CONNECT back into the tunnel server itself (508 Loop Detected). Without it, one client
 * can send a pipeline of `CONNECT <server's listener>` heads and make the tunnel open tunnels to
 * itself, each carrying the rest of the pipeline inward. Our server tells our agents its client
 * listeners (lib/control.ts); a wildcard listener is reached at the server's own address as this
 * agent sees it, and at any address of this machine when the server runs here too.
 *
 * @module
 */
import { networkInterfaces } from "node:os";
import type { HostPort } from "../hostport.ts";
import { type DialAddress, dialAddress } from "../tunnel/address.ts";

/** The addresses of this machine's interfaces, loopback included. */
function localAddresses(): Set<string> {
  const addresses = new Set(["127.0.0.1", "::1"]);
  for (const entries of Object.values(networkInterfaces())) {
    for (const entry of entries ?? []) {
      const address = dialAddress(entry.address);
      if (address) addresses.add(address.ip);
    }
  }
  return addresses;
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

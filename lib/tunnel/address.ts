/**
 * The address a CONNECT target is dialed at. A client can spell one host many ways (IPv4-mapped
 * IPv6 in hex or dotted form, zero-padded groups, a zone ID, integer and octal IPv4, a name); each
 * is reduced here to the IP the socket will connect to, in its own family: `::ffff:7f00:1` is the
 * IPv4 address 127.0.0.1, because that is where the kernel sends it. Policy (the allow-list, loop
 * refusal) is decided on that address, and that address is dialed.
 *
 * Parsing uses ipaddr.js (widely used, no dependencies) rather than hand-written IPv6 code.
 *
 * @module
 */
import { lookup as dnsLookup } from "node:dns/promises";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import ipaddr from "ipaddr.js";

/** An IP as dialed. */
export interface DialAddress {
  /** The address in canonical text, without zone: what policy is matched against. */
  ip: string;
  family: 4 | 6;
  /** What the socket connects to: `ip` with its zone ID, if it has one. */
  dial: string;
  /** The parsed address, for range matching. */
  parsed: ipaddr.IPv4 | ipaddr.IPv6;
}

/** Resolves a host name to its addresses, like `dns.lookup(host, { all: true })`. */
export type Resolve = (host: string) => Promise<string[]>;

const systemResolve: Resolve = async (host) => (await dnsLookup(host, { all: true })).map((entry) => entry.address);

/**
 * The dialed form of an IP literal, or undefined when `text` is not one. IPv4-mapped IPv6 becomes
 * IPv4; a zone ID is kept for dialing and left out of the matched address.
 */
export function dialAddress(text: string): DialAddress | undefined {
  if (isIP(text) === 0) return undefined;
  const [address, zone] = text.split("%", 2);
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    parsed = ipaddr.process(address);
  } catch {
    return undefined;
  }
  const family = parsed.kind() === "ipv4" ? 4 : 6;
  const ip = parsed.toString();
  return { ip, family, dial: family === 6 && zone ? `${ip}%${zone}` : ip, parsed };
}

/**
 * The addresses `host` is dialed at: itself when it is an IP literal, else what the resolver
 * gives (which also reads integer, octal and shortened IPv4 forms), each in dialed form. Rejects
 * when resolution fails.
 */
export async function resolveTarget(host: string, resolve: Resolve = systemResolve): Promise<DialAddress[]> {
  const literal = dialAddress(host);
  if (literal) return [literal];
  const addresses = (await resolve(host)).map(dialAddress).filter((address) => address !== undefined);
  if (addresses.length === 0) throw Object.assign(new Error(`${host} resolves to no address`), { code: "ENOTFOUND" });
  return addresses;
}

/** The IPs of this machine's network interfaces, loopback included, in dialed form. */
export function interfaceAddresses(): DialAddress[] {
  return Object.values(networkInterfaces())
    .flatMap((entries) => entries ?? [])
    .map((entry) => dialAddress(entry.address))
    .filter((address) => address !== undefined);
}

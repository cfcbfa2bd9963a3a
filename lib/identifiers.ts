/**
 * What an agent says it can reach, in Konnectivity's `--agent-identifiers` spelling
 * (`host=node-3&cidr=10.0.3.0/24&ipv4=10.0.3.7&ipv6=fd00::7&default-route=true`), and whether a
 * CONNECT target is among it: the server's `destHost` strategy sends a CONNECT to an agent that
 * announced its target, `defaultRoute` to one that announced `default-route=true`.
 *
 * @module
 */
import ipaddr from "ipaddr.js";
import { type DialAddress, dialAddress } from "./tunnel/address.ts";

/** What a server or agent id may be: a short token, so that it fits a log line and a metric label. */
export const ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

/** An agent's announced destinations. */
export interface AgentIdentifiers {
  /** Host names, lower case. */
  hosts: string[];
  /** IP addresses (IPv4 and IPv6), canonical. */
  addresses: string[];
  cidrs: [ipaddr.IPv4 | ipaddr.IPv6, number][];
  defaultRoute: boolean;
}

/** The identifiers of an agent that announced none. */
export const NO_IDENTIFIERS: AgentIdentifiers = { hosts: [], addresses: [], cidrs: [], defaultRoute: false };

/** Parses Konnectivity's syntax; throws with the part it cannot read. */
export function parseIdentifiers(text: string): AgentIdentifiers {
  const identifiers: AgentIdentifiers = { hosts: [], addresses: [], cidrs: [], defaultRoute: false };
  for (const [key, value] of new URLSearchParams(text)) {
    if (key === "host" && /^[A-Za-z0-9.-]{1,253}$/.test(value)) identifiers.hosts.push(value.toLowerCase());
    else if ((key === "ipv4" || key === "ipv6") && dialAddress(value)?.family === (key === "ipv4" ? 4 : 6)) {
      identifiers.addresses.push(dialAddress(value)?.ip as string);
    } else if (key === "cidr" && ipaddr.isValidCIDR(value)) identifiers.cidrs.push(ipaddr.parseCIDR(value));
    else if (key === "default-route" && (value === "true" || value === "false")) identifiers.defaultRoute = value === "true";
    else throw new Error(`cannot read ${JSON.stringify(`${key}=${value}`)}: use host=, ipv4=, ipv6=, cidr= or default-route=true|false`);
  }
  return identifiers;
}

/** The identifiers in the same syntax, as the agent sends them. */
export function formatIdentifiers(identifiers: AgentIdentifiers): string {
  const params = new URLSearchParams();
  for (const host of identifiers.hosts) params.append("host", host);
  for (const address of identifiers.addresses) params.append(address.includes(":") ? "ipv6" : "ipv4", address);
  for (const [range, bits] of identifiers.cidrs) params.append("cidr", `${range.toString()}/${bits}`);
  if (identifiers.defaultRoute) params.append("default-route", "true");
  return params.toString();
}

/** A CONNECT target's host as agents' identifiers are matched against it: read once per CONNECT. */
export interface Destination {
  /** The host as written, lower case. */
  name: string;
  /** The IP, when the host is a literal. */
  address: DialAddress | undefined;
}

/** The {@link Destination} of a CONNECT target's host (a name or an IP literal). */
export function destination(host: string): Destination {
  return { name: host.toLowerCase(), address: dialAddress(host) };
}

/** True when `target` is one `identifiers` announced: by name, by address, or in a CIDR. */
export function announces(identifiers: AgentIdentifiers, target: Destination): boolean {
  const { address } = target;
  if (!address) return identifiers.hosts.includes(target.name);
  return (
    identifiers.addresses.includes(address.ip) ||
    identifiers.hosts.includes(address.ip) ||
    identifiers.cidrs.some(([range, bits]) => range.kind() === address.parsed.kind() && address.parsed.match(range, bits))
  );
}

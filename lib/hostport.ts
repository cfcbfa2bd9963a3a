/**
 * `host:port` parsing shared by flags and the CONNECT parser.
 *
 * @module
 */

/** A host (name, IPv4 or IPv6 literal without brackets) and a TCP/UDP port. */
export interface HostPort {
  host: string;
  port: number;
}

const HOST_NAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$/;
const IPV6 = /^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$/;

/**
 * Parses `host:port`, `[v6]:port`; returns `undefined` when the text is not exactly that.
 * An empty host (`:8443`) means all interfaces and becomes `0.0.0.0`, as Go's `net.Listen` does.
 */
export function parseHostPort(text: string): HostPort | undefined {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end < 0 || text[end + 1] !== ":") return undefined;
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (!host.includes(":") || !IPV6.test(host)) return undefined;
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return undefined;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host === "") host = "0.0.0.0";
    if (!HOST_NAME.test(host)) return undefined;
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  if (port > 65535) return undefined;
  return { host, port };
}

/** Formats a host and port back to `host:port`, bracketing IPv6 literals. */
export function formatHostPort(address: HostPort): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * HTTP CONNECT proxies for an agent that reaches its server over TLS-on-TCP: which proxy serves a
 * server address (`--proxy`, `HTTPS_PROXY`, `NO_PROXY`, read the way curl reads them), and a TCP
 * socket opened through it, on which the agent then runs TLS as if it had dialed the server.
 *
 * @module
 */
import { connect, isIP, type Socket } from "node:net";
import ipaddr from "ipaddr.js";

/** A proxy URL with its credentials decoded. */
export interface ProxyConfig {
  url: URL;
  /** `user:pass`, percent-decoded, when the URL carries a user name. */
  auth?: string;
}

/** Longest response head accepted: a proxy that sends more is broken or not a proxy. */
const maxHeadBytes = 16 * 1024;

/** The text of a proxy value with any password replaced, so that no message leaks it. */
function redact(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)?([^:@/]*):[^@/]*@/i, "$1$2:***@");
}

/** Parses a proxy value; only `http://` is accepted because TLS runs inside the tunnel, not to the proxy. */
function parseProxy(text: string, source: string): ProxyConfig {
  try {
    const url = new URL(text);
    if (url.protocol === "http:" && url.hostname !== "") {
      const auth = url.username || url.password ? `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}` : undefined;
      return { url, auth };
    }
  } catch {}
  throw new Error(`${source} ${JSON.stringify(redact(text))}: expected an http:// proxy URL such as http://proxy:3128`);
}

/** An address without brackets, lowercased, without a trailing dot; IPs in canonical form. */
function normalizeHost(host: string): string {
  const bare = host
    .replace(/^\[(.*)\]$/, "$1")
    .toLowerCase()
    .replace(/\.$/, "");
  try {
    return isIP(bare) === 0 ? bare : ipaddr.process(bare).toString();
  } catch {
    return bare;
  }
}

/** Whether one `NO_PROXY` entry covers the target; malformed entries match nothing, as in curl. */
function noProxyMatches(entry: string, host: string, port: number): boolean {
  if (entry === "*") return true;
  const match = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry) ?? (entry.split(":").length === 2 ? /^([^:]+):(\d+)$/.exec(entry) : undefined);
  const pattern = match ? match[1] : entry;
  if (match?.[2] !== undefined && Number(match[2]) !== port) return false;
  if (pattern.includes("/")) {
    if (isIP(host) === 0) return false;
    try {
      const [range, bits] = ipaddr.parseCIDR(pattern);
      const address = ipaddr.process(host);
      return address.kind() === range.kind() && address.match(range, bits);
    } catch {
      return false;
    }
  }
  const name = normalizeHost(pattern.replace(/^\*?\./, ""));
  return name !== "" && (host === name || (isIP(host) === 0 && host.endsWith(`.${name}`)));
}

/**
 * The proxy to reach `target` through, or undefined to dial it directly. The `--proxy` flag value
 * (when non-empty) wins over `HTTPS_PROXY`, which wins over `https_proxy`. Like curl, `NO_PROXY`
 * (else `no_proxy`) applies to the flag as well: a comma-separated list of `*`, `host`, `.domain`
 * or `domain` (both match the domain and its subdomains), `host:port`, an IP (`[::1]` too) or a
 * CIDR, matched case-insensitively against the address as given (names are not resolved).
 *
 * Only `http://` URLs are accepted; a URL without a port means port 80, as URLs do (curl would
 * use 1080). Throws an Error naming the flag or variable for any other value, even when
 * `NO_PROXY` covers the target, so that a misconfiguration shows up before it matters.
 */
export function proxyFor(
  target: { host: string; port: number },
  options: { flag?: string; env?: Record<string, string | undefined> },
): URL | undefined {
  const env = options.env ?? process.env;
  const [source, value] = options.flag
    ? ["--proxy", options.flag]
    : env.HTTPS_PROXY
      ? ["HTTPS_PROXY", env.HTTPS_PROXY]
      : ["https_proxy", env.https_proxy];
  if (!value) return undefined;
  const { url } = parseProxy(value, source);
  const host = normalizeHost(target.host);
  const entries = (env.NO_PROXY || env.no_proxy || "").split(",").map((entry) => entry.trim().toLowerCase());
  return entries.some((entry) => entry !== "" && noProxyMatches(entry, host, target.port)) ? undefined : url;
}

/**
 * Opens a TCP connection to `target` through the HTTP proxy at `proxy` (port 80 when the URL has
 * none): sends `CONNECT`, with `Proxy-Authorization: Basic` when the URL carries credentials, and
 * resolves on any 2xx with the socket paused right after the response head. Bytes that came with
 * the head are unshifted back, so the next reader (`resume()`, `pipe()`, TLS) sees them.
 *
 * Rejects with a one-line Error naming proxy and target (never the password) when the proxy
 * cannot be reached, closes early, sends a head over 16 KiB, answers non-2xx
 * (`proxy http://p:3128 refused CONNECT t:443: 407 Proxy Authentication Required`), or when
 * `timeoutMs` passes or `signal` aborts first. The socket is destroyed on every failure.
 */
export async function dialThroughProxy(
  proxy: URL,
  target: { host: string; port: number },
  options: { timeoutMs: number; signal?: AbortSignal },
): Promise<Socket> {
  const { url, auth } = parseProxy(proxy.href, "proxy");
  const port = Number(url.port || 80);
  const name = `http://${url.hostname}:${port}`;
  const bare = target.host.replace(/^\[(.*)\]$/, "$1");
  const authority = `${isIP(bare) === 6 ? `[${bare}]` : bare}:${target.port}`;
  const headers = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`];
  if (auth !== undefined) headers.push(`Proxy-Authorization: Basic ${Buffer.from(auth).toString("base64")}`);
  const { timeoutMs, signal } = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new Error(`cannot reach proxy ${name} for ${authority}: aborted`));
    const socket = connect({ host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port });
    let received = Buffer.alloc(0);
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.off("connect", onConnect).off("data", onData).off("error", onError).off("close", onClose);
    };
    const fail = (message: string) => {
      cleanup();
      socket.destroy();
      reject(new Error(message));
    };
    const unreachable = (reason: string) => fail(`cannot reach proxy ${name} for ${authority}: ${reason}`);
    const onConnect = () => socket.write(`${headers.join("\r\n")}\r\n\r\n`);
    const onError = (error: NodeJS.ErrnoException) => unreachable(error.code ?? error.message);
    const onClose = () => unreachable("connection closed before the response head");
    const onAbort = () => unreachable("aborted");
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf("\r\n\r\n");
      if (end < 0 || end + 4 > maxHeadBytes) {
        if (received.length >= maxHeadBytes) fail(`proxy ${name} sent a response head over ${maxHeadBytes} bytes for CONNECT ${authority}`);
        return;
      }
      const status = /^HTTP\/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n/.exec(received.subarray(0, end + 2).toString("latin1"));
      if (!status) return fail(`proxy ${name} sent a malformed response to CONNECT ${authority}`);
      if (!status[1].startsWith("2")) return fail(`proxy ${name} refused CONNECT ${authority}: ${status[1]} ${status[2] ?? ""}`.trimEnd());
      cleanup();
      // Paused so no byte is emitted before the caller listens; the rest goes back to the front.
      socket.pause();
      if (received.length > end + 4) socket.unshift(received.subarray(end + 4));
      resolve(socket);
    };
    const timer = setTimeout(() => unreachable(`timed out after ${timeoutMs} ms`), timeoutMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.on("connect", onConnect).on("data", onData).on("error", onError).on("close", onClose);
  });
}

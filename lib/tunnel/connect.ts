/**
 * HTTP/1.1 CONNECT request heads: reading one from a stream within size and time limits, parsing
 * the `CONNECT host:port` target, and the status replies the tunnel sends.
 *
 * @module
 */
import type { Duplex, Readable } from "node:stream";
import { type HostPort, parseHostPort } from "../hostport.ts";

/** A request that gets an HTTP error status instead of a tunnel. */
export class HttpError extends Error {
  /** HTTP status code to answer with. */
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "HttpError";
    this.status = status;
  }
}

/** A parsed request head. Header names are lower-cased. */
export interface RequestHead {
  method: string;
  target: string;
  version: string;
  headers: Array<[string, string]>;
}

/** Limits for {@link readRequestHead}. */
export interface HeadLimits {
  /** Largest head accepted, request line and headers together (431 beyond it). */
  maxBytes: number;
  /** Time allowed for the whole head to arrive (408 beyond it). */
  timeoutMs: number;
}

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  405: "Method Not Allowed",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** True when `text` holds a control character (or a space, unless `allowBlank`): DEL, or below 0x20 except tab. */
function hasControl(text: string, allowBlank: boolean): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0x7f || (code < 0x20 && !(allowBlank && code === 0x09)) || (code === 0x20 && !allowBlank)) return true;
  }
  return false;
}

/** Finds the blank line that ends a head; returns the index just past it, or -1. */
function headEnd(buffer: Buffer): number {
  const crlf = buffer.indexOf("\r\n\r\n");
  const lf = buffer.indexOf("\n\n");
  if (crlf < 0) return lf < 0 ? -1 : lf + 2;
  if (lf < 0 || crlf < lf) return crlf + 4;
  return lf + 2;
}

/**
 * Parses a request head (without the terminating blank line). Throws {@link HttpError} 400 for
 * anything that is not a well-formed HTTP/1.x request.
 */
export function parseRequestHead(text: string): RequestHead {
  const lines = text.split(/\r?\n/);
  const requestLine = lines.shift() ?? "";
  const parts = requestLine.split(" ");
  if (parts.length !== 3) throw new HttpError(400, "malformed request line");
  const [method, target, version] = parts;
  if (!TOKEN.test(method)) throw new HttpError(400, "malformed method");
  if (!/^HTTP\/1\.[01]$/.test(version)) throw new HttpError(400, `unsupported protocol version ${JSON.stringify(version.slice(0, 16))}`);
  if (target === "" || hasControl(target, false)) throw new HttpError(400, "malformed request target");
  const headers: Array<[string, string]> = [];
  for (const line of lines) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpError(400, "malformed header line");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new HttpError(400, "malformed header name");
    const value = line.slice(colon + 1).trim();
    if (hasControl(value, true)) throw new HttpError(400, "control character in header value");
    headers.push([name.toLowerCase(), value]);
  }
  return { method, target, version, headers };
}

/** Parses the authority-form target of a CONNECT (`host:port`, `[v6]:port`); 400 otherwise. */
export function parseConnectTarget(target: string): HostPort {
  const address = parseHostPort(target);
  if (address === undefined || target.startsWith(":")) {
    throw new HttpError(400, `CONNECT target must be host:port, got ${JSON.stringify(target.slice(0, 100))}`);
  }
  if (address.port === 0) throw new HttpError(400, "CONNECT target port must not be 0");
  return address;
}

/**
 * Reads one request head from `input`, leaving the stream paused. Resolves with the head and the
 * bytes that followed it (they belong to the tunnel). Rejects with {@link HttpError} 400, 408 or 431,
 * or with a plain Error when the peer closes before a complete head.
 */
export function readRequestHead(input: Readable, limits: HeadLimits): Promise<{ head: RequestHead; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (error: Error | null, value?: { head: RequestHead; rest: Buffer }) => {
      clearTimeout(timer);
      input.off("data", onData);
      input.off("end", onEnd);
      input.off("error", onError);
      input.pause();
      if (error) reject(error);
      else resolve(value as { head: RequestHead; rest: Buffer });
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const end = headEnd(buffered);
      if (end < 0) {
        if (buffered.length > limits.maxBytes) {
          finish(new HttpError(431, `request head exceeds ${limits.maxBytes} bytes`));
        }
        return;
      }
      if (end > limits.maxBytes) return finish(new HttpError(431, `request head exceeds ${limits.maxBytes} bytes`));
      try {
        const head = parseRequestHead(buffered.toString("latin1", 0, end).replace(/\r?\n\r?\n$/, ""));
        finish(null, { head, rest: buffered.subarray(end) });
      } catch (err) {
        finish(err as Error);
      }
    };
    const onEnd = () => finish(new Error(`peer closed after ${buffered.length} bytes, before a complete request head`));
    const onError = (err: Error) => finish(err);
    const timer = setTimeout(() => finish(new HttpError(408, `request head not complete after ${limits.timeoutMs} ms`)), limits.timeoutMs);
    input.on("data", onData);
    input.once("end", onEnd);
    input.once("error", onError);
    input.resume();
  });
}

/** The status line and headers of a reply; for errors, a short text body that gives the reason. */
export function statusResponse(status: number, reason = ""): string {
  const line = `HTTP/1.1 ${status} ${REASONS[status] ?? "Unknown"}\r\n`;
  if (status === 200) return `${line}\r\n`;
  const body = `${reason || REASONS[status] || "error"}\n`;
  const allow = status === 405 ? "Allow: CONNECT\r\n" : "";
  return `${line}${allow}Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/**
 * Answers `status` on `socket`, ends it, and keeps reading (and discarding) for up to `lingerMs`
 * so that unread request bytes do not turn the close into a reset that loses the answer.
 */
export function replyAndClose(socket: Duplex, status: number, options: { reason?: string; lingerMs?: number } = {}): void {
  if (socket.destroyed) return;
  socket.on("error", () => {});
  socket.end(statusResponse(status, options.reason));
  const timer = setTimeout(() => socket.destroy(), options.lingerMs ?? 1_000);
  socket.once("close", () => clearTimeout(timer));
  socket.once("end", () => socket.destroy());
  socket.resume();
}

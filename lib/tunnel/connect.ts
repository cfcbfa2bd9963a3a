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
  508: "Loop Detected",
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

const VERSIONS = ["HTTP/1.0", "HTTP/1.1"];
// biome-ignore lint/suspicious/noControlCharactersInRegex: a request target holds no control character
const REQUEST_LINE_START = /^([!#$%&'*+.^_`|~0-9A-Za-z-]*)(?: ([^\x00-\x20\x7f]*)(?: (.*))?)?$/s;

/**
 * Why `start`, the first bytes a client sent, cannot begin an HTTP/1.x request line, or undefined
 * while it still could. A TLS ClientHello or a line of garbage is refused at its first bytes
 * instead of waiting for a blank line that never comes.
 */
export function impossibleRequestStart(start: Buffer): string | undefined {
  const newline = start.indexOf("\n");
  const line = start.toString("latin1", 0, newline < 0 ? Math.min(start.length, 8192) : newline).replace(/\r$/, "");
  const parts = REQUEST_LINE_START.exec(line);
  if (parts === null) return "the request does not begin with an HTTP request line";
  const [, method, target, version] = parts;
  const complete = newline >= 0;
  if (method === "" && (complete || line.length > 0)) return "the request does not begin with an HTTP method";
  if (target === undefined) return complete ? "malformed request line" : undefined;
  if (version === undefined) return complete || (target === "" && line.length > method.length + 1) ? "malformed request line" : undefined;
  if (target === "") return "malformed request target";
  const fits = complete ? VERSIONS.includes(version) : VERSIONS.some((known) => known.startsWith(version));
  return fits ? undefined : `unsupported protocol version ${JSON.stringify(version.slice(0, 16))}`;
}

/** A request head read from a stream: parsed, its raw bytes, and the bytes that followed it. */
export interface ReadHead {
  head: RequestHead;
  /** The head as received, blank line included. */
  raw: Buffer;
  /** Bytes after the head: they belong to the tunnel. */
  rest: Buffer;
}

/**
 * Reads one request head from `input`, leaving the stream paused. Rejects with {@link HttpError}
 * 400 (at the first bytes that cannot begin a request), 408 or 431, or with a plain Error when the
 * peer closes before a complete head.
 */
export function readRequestHead(input: Readable, limits: HeadLimits): Promise<ReadHead> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (error: Error | null, value?: ReadHead) => {
      clearTimeout(timer);
      input.off("data", onData);
      input.off("end", onEnd);
      input.off("error", onError);
      input.pause();
      if (error) reject(error);
      else resolve(value as ReadHead);
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const end = headEnd(buffered);
      if (end < 0) {
        const impossible = impossibleRequestStart(buffered);
        if (impossible) finish(new HttpError(400, impossible));
        else if (buffered.length > limits.maxBytes) finish(new HttpError(431, `request head exceeds ${limits.maxBytes} bytes`));
        return;
      }
      if (end > limits.maxBytes) return finish(new HttpError(431, `request head exceeds ${limits.maxBytes} bytes`));
      try {
        const head = parseRequestHead(buffered.toString("latin1", 0, end).replace(/\r?\n\r?\n$/, ""));
        finish(null, { head, raw: buffered.subarray(0, end), rest: buffered.subarray(end) });
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

/** How the wait of {@link firstBytes} ended. */
export type FirstBytes = "answered" | "timeout" | "ended";

/**
 * Resolves "answered" once `stream` has a byte to read (left unread, for the pipe), "timeout"
 * after `timeoutMs`, or "ended" when it ends or fails first: the agent's answer to a CONNECT, awaited.
 */
export function firstBytes(stream: Duplex, timeoutMs: number): Promise<FirstBytes> {
  return new Promise((resolve) => {
    const finish = (outcome: FirstBytes) => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onEnd);
      stream.off("close", onEnd);
      resolve(outcome);
    };
    const onData = (chunk: Buffer) => {
      stream.pause();
      stream.unshift(chunk);
      finish("answered");
    };
    const onEnd = () => finish("ended");
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    stream.once("data", onData);
    stream.once("end", onEnd);
    stream.once("error", onEnd);
    stream.once("close", onEnd);
  });
}

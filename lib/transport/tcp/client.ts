/**
 * The agent's end of the TCP transport: dial TLS on TCP (directly, or through an HTTP CONNECT
 * proxy), present the client certificate, then serve HTTP/2 on the socket it opened.
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import http2 from "node:http2";
import type { Socket } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT, TCP_ALPN } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { ConnectOptions } from "../types.ts";
import { TcpConnection } from "./connection.ts";
import { dialThroughProxy } from "./proxy.ts";
import { http2Transport } from "./read-ahead.ts";
import { sessionOptions } from "./settings.ts";

/** Dials a server; resolves once the server has accepted this agent (its first stream arrived). */
export async function connect(options: ConnectOptions): Promise<TcpConnection> {
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport };
  const target = formatHostPort(options);
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), transport.handshakeTimeoutMs);
  const timedOut = () => new QuicError(`handshake with ${target} timed out after ${transport.handshakeTimeoutMs} ms (TCP transport)`);
  let socket: TLSSocket | undefined;
  try {
    socket = await secureSocket(options, { verifyServer: true, signal: deadline.signal });
    if (socket.alpnProtocol !== TCP_ALPN) {
      throw new QuicError(`server ${target} does not speak the TCP transport (ALPN ${socket.alpnProtocol || "none"}, want ${TCP_ALPN})`);
    }
    socket.setNoDelay(true);
    const session = http2.performServerHandshake(http2Transport(socket, transport), sessionOptions(transport));
    session.once("remoteSettings", () => session.setLocalWindowSize(transport.connectionWindow));
    const connection = new TcpConnection(session, { socket, peer: target, role: "agent", transport });
    const refused = new Promise<never>((_, reject) => {
      // A refused client certificate arrives as an alert after our side of the handshake is done.
      socket?.once("error", (err) => reject(describeTlsError(err, target)));
      // The alert that explains a refusal may come just after the close: it goes first if it does.
      connection.once("close", (error) =>
        setImmediate(() =>
          reject(new QuicError(`server ${target} closed the connection during the handshake${error ? ` (${error.message})` : ""}`)),
        ),
      );
      deadline.signal.addEventListener("abort", () => reject(timedOut()));
    });
    await Promise.race([connection.whenConfirmed(), refused]);
    refused.catch(() => {});
    return connection;
  } catch (err) {
    socket?.destroy();
    if (deadline.signal.aborted) throw timedOut();
    throw err instanceof QuicError ? err : describeTlsError(err as Error, target);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Dials without verifying the server and resolves with its certificate, to explain a handshake
 * that failed; undefined when even that fails.
 */
export async function peekCertificate(options: ConnectOptions): Promise<X509Certificate | undefined> {
  const deadline = AbortSignal.timeout({ ...DEFAULT_TRANSPORT, ...options.transport }.handshakeTimeoutMs);
  const socket = await secureSocket(options, { verifyServer: false, signal: deadline }).catch(() => undefined);
  const certificate = socket?.getPeerX509Certificate();
  socket?.destroy();
  return certificate;
}

/** A TLS socket to the server, handshake done; through the proxy when `options.proxy` says so. */
async function secureSocket(options: ConnectOptions, checks: { verifyServer: boolean; signal: AbortSignal }): Promise<TLSSocket> {
  const target = formatHostPort(options);
  let tcp: Socket | undefined;
  if (options.proxy) {
    const timeoutMs = { ...DEFAULT_TRANSPORT, ...options.transport }.handshakeTimeoutMs;
    tcp = await dialThroughProxy(options.proxy, options, { timeoutMs, signal: checks.signal });
  }
  return new Promise((resolve, reject) => {
    const settings: tls.ConnectionOptions = {
      servername: options.serverName,
      ca: Buffer.from(options.tls.ca),
      cert: Buffer.from(options.tls.cert),
      key: Buffer.from(options.tls.key),
      ALPNProtocols: [TCP_ALPN],
      rejectUnauthorized: checks.verifyServer,
    };
    const socket = tls.connect(tcp ? { ...settings, socket: tcp } : { ...settings, host: options.host, port: options.port });
    const abort = () => {
      socket.destroy();
      reject(new QuicError(`handshake with ${target} timed out`));
    };
    checks.signal.addEventListener("abort", abort, { once: true });
    socket.once("secureConnect", () => {
      checks.signal.removeEventListener("abort", abort);
      resolve(socket);
    });
    socket.once("error", (err) => {
      checks.signal.removeEventListener("abort", abort);
      socket.destroy();
      reject(describeTlsError(err, target));
    });
  });
}

/** A TLS or socket error in the words the QUIC engines use (TLS alerts by name). */
function describeTlsError(err: Error & { code?: string }, target: string): QuicError {
  const message = err.message;
  if (/certificate|altname|self.signed|verify/i.test(message) && !/alert/i.test(message)) {
    return new QuicError(`certificate of ${target} refused: ${message}`, { cause: err });
  }
  if (err.code === "ECONNREFUSED" || err.code === "ECONNRESET" || err.code === "EHOSTUNREACH" || err.code === "ETIMEDOUT") {
    return new QuicError(`cannot connect to ${target} over TCP: ${err.code}`, { cause: err });
  }
  return new QuicError(`handshake with ${target} failed: ${message}`, { cause: err });
}

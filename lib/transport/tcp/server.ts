/**
 * The tunnel server's end of the TCP transport: a TLS listener that requires a client certificate
 * from the CA, and on each accepted agent an HTTP/2 client session over that socket.
 *
 * @module
 */
import { EventEmitter } from "node:events";
import http2 from "node:http2";
import type { Socket } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT, TCP_ALPN, type TransportOptions } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { ListenOptions, QuicServer, ServerEvents, ServerStats, TlsMaterial } from "../types.ts";
import { TcpConnection } from "./connection.ts";
import { http2Transport } from "./read-ahead.ts";
import { passAlpnCheck, sessionOptions } from "./settings.ts";

/** Handshakes under way at once, beyond which new TCP connections are closed at once. */
const DEFAULT_MAX_HANDSHAKES = 1024;

const secureContext = (material: TlsMaterial) => ({
  ca: Buffer.from(material.ca),
  cert: Buffer.from(material.cert),
  key: Buffer.from(material.key),
});

const peerOf = (socket: Socket) => formatHostPort({ host: socket.remoteAddress ?? "?", port: socket.remotePort ?? 0 });

/** A listening TCP-transport endpoint. */
class TcpServer extends EventEmitter<ServerEvents> implements QuicServer {
  readonly #server: tls.Server;
  readonly #transport: TransportOptions;
  readonly #connections = new Set<TcpConnection>();
  /**
   * Sockets in their TLS handshake, by peer address: Node hands the raw socket to "connection"
   * and a TLSSocket wrapping it to "secureConnection", Bun the same object to both.
   */
  readonly #handshaking = new Map<string, Socket>();
  readonly #refused: Record<string, number> = {};
  readonly #maxHandshakes: number;

  constructor(options: ListenOptions) {
    super();
    this.#transport = { ...DEFAULT_TRANSPORT, ...options.transport };
    this.#maxHandshakes = options.limits?.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES;
    this.#server = tls.createServer({
      ...secureContext(options.tls),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: [TCP_ALPN],
      handshakeTimeout: this.#transport.handshakeTimeoutMs,
    });
    this.#server.on("connection", (socket: Socket) => this.#handshakeStarted(socket));
    this.#server.on("secureConnection", (socket) => this.#accept(socket));
    this.#server.on("tlsClientError", (err, socket) => {
      this.#count(/timed out|timeout/i.test(err.message) ? "handshake_timeout" : "tls");
      const peer = peerOf(socket);
      this.emit("rejected", peer, new QuicError(`TLS handshake with ${peer} failed: ${err.message}`, { cause: err }));
    });
    this.#server.on("error", (err) => this.emit("error", err));
  }

  /** Binds; rejects with the address when it cannot. */
  listen(host: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const failed = (err: Error) =>
        reject(new QuicError(`cannot listen for agents on TCP ${formatHostPort({ host, port })}: ${err.message}`, { cause: err }));
      this.#server.once("error", failed);
      this.#server.listen(port, host, () => {
        this.#server.off("error", failed);
        resolve();
      });
    });
  }

  address(): { host: string; port: number } {
    const address = this.#server.address();
    return typeof address === "object" && address ? { host: address.address, port: address.port } : { host: "", port: 0 };
  }

  setTls(material: TlsMaterial): void {
    try {
      this.#server.setSecureContext(secureContext(material));
    } catch (err) {
      throw new QuicError(`cannot use the new certificates: ${(err as Error).message}`, { cause: err });
    }
  }

  stats(): ServerStats {
    return { handshakesInProgress: this.#handshaking.size, refused: { ...this.#refused } };
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#handshaking.values()) socket.destroy();
    for (const connection of this.#connections) connection.close(0, "server stopping");
    await closed;
  }

  #count(reason: string): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }

  #handshakeStarted(socket: Socket): void {
    if (this.#handshaking.size >= this.#maxHandshakes) {
      this.#count("handshake_limit");
      socket.destroy();
      return;
    }
    const peer = peerOf(socket);
    this.#handshaking.set(peer, socket);
    socket.once("close", () => {
      if (this.#handshaking.get(peer) === socket) this.#handshaking.delete(peer);
    });
  }

  #accept(socket: TLSSocket): void {
    const peer = peerOf(socket);
    this.#handshaking.delete(peer);
    if (socket.alpnProtocol !== TCP_ALPN) {
      this.#count("alpn");
      this.emit("rejected", peer, new QuicError(`agent ${peer} does not speak ${TCP_ALPN} (ALPN ${socket.alpnProtocol || "none"})`));
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    passAlpnCheck(socket);
    const session = http2.connect(`https://${peer}`, {
      createConnection: () => http2Transport(socket, this.#transport),
      ...sessionOptions(this.#transport),
    });
    const connection = new TcpConnection(session, { socket, peer, role: "server", transport: this.#transport });
    // Held from here, so that close() also ends an agent that has not sent its SETTINGS yet.
    this.#connections.add(connection);
    connection.once("close", () => this.#connections.delete(connection));
    session.once("remoteSettings", () => {
      session.setLocalWindowSize(this.#transport.connectionWindow);
      if (!connection.closed) this.emit("connection", connection);
    });
  }
}

/** Listens for agents on TLS over TCP. */
export async function listen(options: ListenOptions): Promise<QuicServer> {
  const server = new TcpServer(options);
  await server.listen(options.host, options.port);
  return server;
}

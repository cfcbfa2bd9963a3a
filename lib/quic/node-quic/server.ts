/**
 * A QUIC server endpoint on `node:quic`: lsquic handles packets, Retry and its own rate limits;
 * this side checks each client's certificate, bounds handshakes, and counts what it refused.
 *
 * @module
 */
import { createPrivateKey } from "node:crypto";
import { EventEmitter } from "node:events";
import type { QuicEndpoint, QuicSession } from "node:quic";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT } from "../../protocol.ts";
import { QuicError, tlsAlertCode } from "../errors.ts";
import type { ListenOptions, QuicServer, ServerEvents, ServerStats, TlsMaterial, TransportOptions } from "../types.ts";
import { peerStreamLimit } from "./bun.ts";
import { describeSessionError, NodeQuicConnection } from "./connection.ts";
import { serverSessionOptions } from "./options.ts";

const ignore = () => {};
const SOCKET_BUFFER_BYTES = 4 << 20;

/** The server endpoint; see {@link QuicServer}. */
export class NodeQuicServer extends EventEmitter<ServerEvents> implements QuicServer {
  #endpoint: QuicEndpoint | undefined;
  readonly #transport: TransportOptions;
  readonly #connections = new Set<NodeQuicConnection>();
  readonly #refused: Record<string, number> = {};
  #handshakes = 0;

  constructor(transport: TransportOptions) {
    super();
    this.#transport = transport;
  }

  /** @internal binds the endpoint this server serves. */
  attach(endpoint: QuicEndpoint): void {
    this.#endpoint = endpoint;
  }

  address(): { host: string; port: number } {
    const address = this.#endpoint?.address;
    return { host: address?.address ?? "", port: address?.port ?? 0 };
  }

  setTls(tls: TlsMaterial): void {
    this.#endpoint?.setSNIContexts({ "*": { keys: [createPrivateKey(Buffer.from(tls.key))], certs: [tls.cert] } }, { replace: true });
  }

  stats(): ServerStats {
    return { handshakesInProgress: this.#handshakes, refused: { ...this.#refused } };
  }

  async close(): Promise<void> {
    for (const connection of this.#connections) connection.close(0, "server shutting down");
    this.#endpoint?.destroy();
    await this.#endpoint?.closed.catch(ignore);
  }

  /** @internal a new session: check its certificate once its handshake is done. */
  onSession(session: QuicSession): void {
    this.#handshakes++;
    let connection: NodeQuicConnection | undefined;
    // Set before any stream can arrive: a stream nobody takes is reset by node:quic.
    session.onstream = (stream) => (connection ? connection.accept(stream) : stream.destroy());
    session.closed.catch(ignore);
    const peerOf = () => {
      const remote = session.path?.remote;
      return remote ? formatHostPort({ host: remote.address, port: remote.port }) : "unknown peer";
    };
    const timer = setTimeout(() => session.destroy(), this.#transport.handshakeTimeoutMs);
    session.opened.then(
      (info) => {
        clearTimeout(timer);
        this.#handshakes--;
        const peer = peerOf();
        // node:quic completes the handshake of a client that sent no certificate, then closes it.
        if (session.peerCertificate === undefined || info.validationErrorReason) {
          session.destroy(undefined, { code: BigInt(tlsAlertCode(116)), reason: "client certificate required" });
          this.#refuse("no_certificate");
          this.emit("rejected", peer, new QuicError(`peer ${peer} presented no valid client certificate`));
          return;
        }
        connection = new NodeQuicConnection(session, {
          peer,
          maxOpenedStreams: peerStreamLimit(session, 100),
          incomingStreamLimit: this.#transport.maxStreams,
        });
        const established = connection;
        this.#connections.add(established);
        established.once("close", () => this.#connections.delete(established));
        this.emit("connection", established);
      },
      (err) => {
        clearTimeout(timer);
        this.#handshakes--;
        const peer = peerOf();
        const error =
          session.destroyed && !(err as { errorCode?: unknown })?.errorCode
            ? new QuicError(`QUIC handshake with ${peer} timed out after ${this.#transport.handshakeTimeoutMs} ms`)
            : describeSessionError(err, peer, "local");
        this.#refuse("handshake_failed");
        this.emit("rejected", peer, error);
      },
    );
  }

  #refuse(reason: string): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }
}

/** Binds a server endpoint; rejects with the address in the message when binding fails. */
export async function listen(options: ListenOptions): Promise<NodeQuicServer> {
  const quic = await import("node:quic");
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport, keepAliveMs: 0 };
  const server = new NodeQuicServer(transport);
  const where = formatHostPort(options);
  let endpoint: QuicEndpoint;
  try {
    endpoint = await quic.listen((session) => server.onSession(session), {
      ...serverSessionOptions(options.tls, transport),
      endpoint: {
        address: where,
        udpReceiveBufferSize: SOCKET_BUFFER_BYTES,
        udpSendBufferSize: SOCKET_BUFFER_BYTES,
        validateAddress: options.retry ?? true,
        maxConnectionsTotal: options.limits?.maxHandshakes ?? 0,
      },
    });
  } catch (err) {
    throw new QuicError(`cannot listen for QUIC on ${where}: ${(err as Error).message}`, { cause: err });
  }
  server.attach(endpoint);
  return server;
}

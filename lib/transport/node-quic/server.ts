/**
 * A QUIC server endpoint on `node:quic`: lsquic handles packets and its own rate limits (but no Retry);
 * this side checks each client's certificate, bounds handshakes, and counts what it refused.
 *
 * @module
 */
import { EventEmitter } from "node:events";
// @ts-ignore: Deno ships no node:quic (nor its types); only Bun loads this engine.
import type { QuicEndpoint, QuicSession } from "node:quic";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT } from "../../protocol.ts";
import { QuicError, tlsAlertCode } from "../errors.ts";
import { UDP_SOCKET_BUFFER_BYTES } from "../socket-buffers.ts";
import type { ListenOptions, QuicServer, ServerEvents, ServerStats, TlsMaterial, TransportOptions } from "../types.ts";
import { peerStreamLimit, sessionHandshakeDeadline } from "./bun.ts";
import { describeSessionError, NodeQuicConnection } from "./connection.ts";
import { serverSessionOptions } from "./options.ts";

const ignore = () => {};

/**
 * Measured on Bun 1.4.5 with genuine Initials from a socket that never answers: lsquic sends no
 * Retry whatever `validateAddress` says (its retry count stays 0) and answers each Initial with its
 * handshake flight, about 2.1x the Initial's size. A Retry sent in front of lsquic cannot work: the
 * client then requires a retry_source_connection_id in the server's transport parameters, which
 * only lsquic writes, inside the TLS handshake. Bun's other endpoint options did not bound it either
 * (`maxConnectionsPerHost` and `sessionCreationRate` change nothing; `maxConnectionsTotal` caps
 * sessions, but the flood then holds every slot): 20,000 genuine Initials from one address
 * (tests/fixtures/udp-flood.ts --kind genuine) cut a connected agent off for over 30 s.
 */
export const RETRY_CAVEAT =
  "node-quic cannot validate agent addresses with a QUIC Retry: lsquic in Bun 1.4.5 ignores validateAddress and answers every Initial with its handshake flight (about 2x its size, within RFC 9000's 3x), so a flood of Initials from one address can cut agents off; use --quic-engine quiche where strangers can reach the QUIC port";

/**
 * Measured through a relay that moves the client to a new source port mid-transfer (the
 * conformance suite's rebinding case): Bun's lsquic connection stops within its idle timeout and
 * every stream on it fails.
 */
export const REBINDING_CAVEAT =
  "node-quic connections do not survive a NAT rebinding (lsquic in Bun 1.4.5 stops the connection when the client's address or port changes): its tunnels fail and the agent reconnects";

/** The server endpoint; see {@link QuicServer}. */
export class NodeQuicServer extends EventEmitter<ServerEvents> implements QuicServer {
  #endpoint: QuicEndpoint | undefined;
  readonly #transport: TransportOptions;
  readonly #connections = new Set<NodeQuicConnection>();
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

  setTls(_tls: TlsMaterial): void {
    // Bun 1.4.5's setSNIContexts drops client verification: every agent after it was refused (116).
    throw new QuicError(
      "--quic-engine node-quic cannot change the certificates of a running server (Bun 1.4.5 would stop asking agents for theirs); restart it to use the new files",
    );
  }

  stats(): ServerStats {
    // lsquic refuses packets itself; what it tells about that is its rate limiting and busy state.
    const stats = this.#endpoint?.stats as unknown as Record<string, bigint> | undefined;
    const count = (...names: string[]) => names.reduce((sum, name) => sum + Number(stats?.[name] ?? 0n), 0);
    return {
      handshakesInProgress: this.#handshakes,
      refused: {
        rate_limited: count("retryRateLimited", "versionNegotiationRateLimited", "statelessResetRateLimited", "immediateCloseRateLimited"),
        busy: count("serverBusyCount"),
      },
    };
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
    // Bun tells the peer's address only with a completed handshake (its session.path is empty).
    let peer = "(address unknown)";
    const deadline = sessionHandshakeDeadline(session, this.#transport.handshakeTimeoutMs);
    session.opened.then(
      (info) => {
        deadline.cancel();
        this.#handshakes--;
        peer = formatHostPort({ host: info.remote.address, port: info.remote.port });
        // node:quic completes the handshake of a client that sent no certificate, then closes it.
        if (session.peerCertificate === undefined || info.validationErrorReason) {
          session.destroy(undefined, { code: BigInt(tlsAlertCode(116)), reason: "client certificate required" });
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
        deadline.cancel();
        this.#handshakes--;
        const error = deadline.timedOut
          ? new QuicError(`QUIC handshake with ${peer} ${deadline.timedOut}`)
          : describeSessionError(err, peer, "handshake");
        this.emit("rejected", peer, error);
      },
    );
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
        udpReceiveBufferSize: UDP_SOCKET_BUFFER_BYTES,
        udpSendBufferSize: UDP_SOCKET_BUFFER_BYTES,
        validateAddress: options.retry ?? true,
      },
    });
  } catch (err) {
    throw new QuicError(`cannot listen for QUIC on ${where}: ${(err as Error).message}`, { cause: err });
  }
  server.attach(endpoint);
  return server;
}

/**
 * Dialing a server with `node:quic`.
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
// @ts-ignore: Deno ships no node:quic (nor its types); only Bun loads this engine.
import type { QuicStream as NodeStream, QuicSession } from "node:quic";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { ConnectOptions } from "../types.ts";
import { type BunSessionOptions, peerStreamLimit, sessionHandshakeDeadline } from "./bun.ts";
import { describeSessionError, NodeQuicConnection } from "./connection.ts";
import { CLIENT_INCOMING_STREAMS, clientSessionOptions } from "./options.ts";

const ignore = () => {};

/** Dials a server; resolves once the handshake is complete and the server has confirmed it. */
export function connect(options: ConnectOptions): Promise<NodeQuicConnection> {
  return dial(options, { verifyServer: true });
}

/**
 * Dials without verifying the server and resolves with its certificate, to explain a handshake
 * that failed; undefined when even that fails.
 */
export async function peekCertificate(options: ConnectOptions): Promise<X509Certificate | undefined> {
  const connection = await dial(options, { verifyServer: false }).catch(() => undefined);
  connection?.close(0, "certificate check");
  return connection?.peerCertificate;
}

async function dial(options: ConnectOptions, checks: { verifyServer: boolean }): Promise<NodeQuicConnection> {
  const quic = await import("node:quic");
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport };
  let sessionOptions: BunSessionOptions;
  try {
    sessionOptions = clientSessionOptions(options.tls, transport, options.serverName);
    if (!checks.verifyServer) sessionOptions.verifyPeer = "manual";
  } catch (err) {
    throw new QuicError(`TLS configuration rejected: ${(err as Error).message}`, { cause: err });
  }
  const address =
    isIP(options.host) !== 0
      ? options.host
      : (
          await lookup(options.host).catch((err) => {
            throw new QuicError(`cannot resolve QUIC server ${options.host}: ${err.code ?? err.message}`, { cause: err });
          })
        ).address;
  const peer = formatHostPort({ host: address, port: options.port });
  // Streams the server opens before `connect()` has returned are kept for the connection.
  let connection: NodeQuicConnection | undefined;
  const early: NodeStream[] = [];
  let session: QuicSession;
  try {
    session = await quic.connect(peer, {
      ...sessionOptions,
      onstream: (stream) => (connection ? connection.accept(stream) : early.push(stream)),
    });
  } catch (err) {
    throw new QuicError(`cannot dial QUIC server ${peer}: ${(err as Error).message}`, { cause: err });
  }
  session.closed.catch(ignore);
  const deadline = sessionHandshakeDeadline(session, transport.handshakeTimeoutMs);
  try {
    await session.opened;
  } catch (err) {
    if (deadline.timedOut) throw new QuicError(`QUIC handshake with ${peer} ${deadline.timedOut}`);
    throw describeSessionError(err, peer, "peer");
  } finally {
    deadline.cancel();
  }
  connection = new NodeQuicConnection(session, {
    peer,
    maxOpenedStreams: peerStreamLimit(session, transport.maxStreams),
    incomingStreamLimit: CLIENT_INCOMING_STREAMS,
  });
  for (const stream of early) connection.accept(stream);
  return connection;
}

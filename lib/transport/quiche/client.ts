/**
 * Dialing a QUIC server with the quiche engine: one UDP socket per connection.
 *
 * @module
 */
import { randomBytes, type X509Certificate } from "node:crypto";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { ConnectOptions } from "../types.ts";
import { quiche } from "./binding.ts";
import { buildConfig } from "./config.ts";
import { QuicheConnection } from "./connection.ts";
import { bindDatagramSocket } from "./datagram.ts";

const CID_LENGTH = 20;

/** Dials a server; resolves once the server has confirmed the handshake. */
export function connect(options: ConnectOptions): Promise<QuicheConnection> {
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

async function dial(options: ConnectOptions, checks: { verifyServer: boolean }): Promise<QuicheConnection> {
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport };
  const config = buildConfig(options.tls, transport, checks.verifyServer);
  const family = isIP(options.host);
  const target =
    family !== 0
      ? { address: options.host, family }
      : await lookup(options.host).catch((err) => {
          throw new QuicError(`cannot resolve QUIC server ${options.host}: ${err.code ?? err.message}`, { cause: err });
        });
  const peer = formatHostPort({ host: target.address, port: options.port });
  const wildcard = target.family === 6 ? "::" : "0.0.0.0";
  const socket = await bindDatagramSocket({ host: wildcard, port: 0, family: target.family === 6 ? 6 : 4 }).catch((err) => {
    throw new QuicError(`cannot open a UDP socket for ${peer}: ${err.message}`, { cause: err });
  });
  const path = { from: { host: target.address, port: options.port }, to: { host: wildcard, port: socket.local.port } };
  const native = quiche.Connection.connect(options.serverName, randomBytes(CID_LENGTH), path.to, path.from, config);
  return await new Promise<QuicheConnection>((resolve, reject) => {
    const connection = new QuicheConnection(native, {
      isServer: false,
      peer,
      send: socket.send,
      transport,
      confirmed: checks.verifyServer,
      onEstablished: () => {
        connection.off("close", onClose);
        resolve(connection);
      },
    });
    const onClose = (error: QuicError | undefined) => reject(error ?? new QuicError(`QUIC connection to ${peer} closed during handshake`));
    connection.once("close", onClose);
    connection.once("close", () => void socket.close());
    socket.onMessage((datagram, source) => {
      // The socket is not connected (so that sends can be batched); ignore anyone but the server.
      if (source.port === options.port && source.address === target.address) connection.receive(datagram, path);
    });
    connection.flush();
  });
}

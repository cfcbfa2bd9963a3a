/**
 * The server's client-facing listeners: plain TCP (as the reference), TLS on the TCP port with an
 * optional required client certificate, and a Unix domain socket (the Kubernetes API server's
 * egress selector speaks HTTP CONNECT over either).
 *
 * @module
 */

import { lstatSync, readFileSync, unlinkSync } from "node:fs";
import { connect as connectSocket, createServer as createNetServer, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer } from "node:tls";
import { formatHostPort, type HostPort } from "../hostport.ts";

/** TLS settings of the TCP listener. */
export interface FrontendTls {
  certFile: string;
  keyFile: string;
  /** When set, clients must present a certificate this CA signed. */
  clientCaFile?: string;
}

function listening(server: Server, where: string, listen: (done: () => void) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new Error(`cannot listen for ${where}: ${err.message}`)));
    listen(() => {
      const address = server.address();
      resolve(typeof address === "string" ? address : address ? formatHostPort({ host: address.address, port: address.port }) : where);
    });
  });
}

/** Reads the frontend's TLS files for a secure context; throws an Error naming the flag. */
export function readFrontendTls(tls: FrontendTls): { cert: Buffer; key: Buffer; ca?: Buffer } {
  const read = (flag: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`--${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  return {
    cert: read("tcp-cert-file", tls.certFile),
    key: read("tcp-cert-key", tls.keyFile),
    ca: tls.clientCaFile ? read("tcp-client-ca-file", tls.clientCaFile) : undefined,
  };
}

/** Starts the TCP listener, with TLS when `tls` is given. Resolves with the bound `host:port`. */
export function listenTcp(
  address: HostPort,
  tls: FrontendTls | undefined,
  onClient: (socket: Duplex) => void,
): Promise<{ server: Server; bound: string }> {
  let server: Server;
  if (tls) {
    const required = Boolean(tls.clientCaFile);
    server = createTlsServer(
      { ...readFrontendTls(tls), requestCert: required, rejectUnauthorized: required, allowHalfOpen: true },
      onClient,
    );
    server.on("tlsClientError", () => {
      // A client without a valid certificate: the handshake failed and the socket is gone.
    });
  } else {
    server = createNetServer({ allowHalfOpen: true, noDelay: true }, onClient);
  }
  const where = `TCP on ${formatHostPort(address)}`;
  return listening(server, where, (done) => server.listen(address.port, address.host, done)).then((bound) => ({ server, bound }));
}

/**
 * Starts a Unix domain socket listener at `path`. A socket file left by a dead process is removed;
 * a live socket or any other kind of file there is an error.
 */
export async function listenUnix(path: string, onClient: (socket: Duplex) => void): Promise<{ server: Server; bound: string }> {
  let stat: ReturnType<typeof lstatSync> | undefined;
  try {
    stat = lstatSync(path);
  } catch {
    stat = undefined;
  }
  if (stat && !stat.isSocket()) throw new Error(`--listen-uds: ${path} exists and is not a socket; not removing it`);
  if (stat) {
    const live = await new Promise<boolean>((resolve) => {
      const probe: Socket = connectSocket(path, () => {
        probe.destroy();
        resolve(true);
      });
      probe.once("error", () => resolve(false));
    });
    if (live) throw new Error(`--listen-uds: another process is listening on ${path}`);
    unlinkSync(path);
  }
  const server = createNetServer({ allowHalfOpen: true }, onClient);
  return { server, bound: await listening(server, `the Unix socket ${path}`, (done) => server.listen(path, done)) };
}

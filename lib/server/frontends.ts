/**
 * The server's client-facing listeners: plain TCP (as the reference), TLS on the TCP port with an
 * optional required client certificate, and a Unix domain socket (the Kubernetes API server's
 * egress selector speaks HTTP CONNECT over either).
 *
 * @module
 */

import { lstatSync, unlinkSync } from "node:fs";
import { connect as connectSocket, createServer as createNetServer, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { formatHostPort, type HostPort } from "../hostport.ts";
import { type CertificateFiles, loadPemSet, type PemSet } from "../ops/certificates.ts";
import { dialAddress, interfaceAddresses } from "../tunnel/address.ts";

/** A listening frontend. */
export interface Frontend {
  server: Server;
  /** Where it listens, for the log: `host:port` or the socket path. */
  bound: string;
  /** Its TCP address, for loop refusal (none for a Unix socket). */
  address?: HostPort;
  /** Uses new certificates for new client handshakes (a TLS frontend). */
  setTls?(pems: PemSet): void;
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

/** Options of a TLS frontend's handshakes. */
export interface HandshakeOptions {
  /** A client's TLS handshake must be done this long after its connection was accepted. */
  timeoutMs: number;
  /** Told of every handshake that failed or ran out of time; the socket is already closed. */
  onFailure(failure: { reason: "timeout" | "error"; error: Error; client: string }): void;
}

/**
 * Starts the TCP listener, with TLS when `tls` names certificate files (clients must then present
 * a certificate if a CA is named too, and finish the handshake within `handshake.timeoutMs`).
 */
export async function listenTcp(
  address: HostPort,
  tls: CertificateFiles | undefined,
  onClient: (socket: Duplex) => void,
  handshake?: HandshakeOptions,
): Promise<Frontend> {
  let server: Server;
  let setTls: Frontend["setTls"];
  if (tls) {
    const required = Boolean(tls.ca);
    const secure = createTlsServer(
      {
        ...loadPemSet(tls),
        requestCert: required,
        rejectUnauthorized: required,
        allowHalfOpen: true,
        // The runtimes' own timer: measured here, Bun, Node and Deno all end a handshake at this
        // deadline even while the client trickles its ClientHello a byte at a time.
        handshakeTimeout: handshake?.timeoutMs,
      },
      onClient,
    );
    secure.on("tlsClientError", (error, socket) => {
      // A failed handshake leaves the socket open (a timed-out one always): without this, a
      // client that sends nothing holds its connection forever.
      const client = socket.remoteAddress ? formatHostPort({ host: socket.remoteAddress, port: socket.remotePort ?? 0 }) : "unknown";
      socket.destroy();
      // Deno's error has the message of Node's, not its code.
      const timedOut = (error as NodeJS.ErrnoException).code === "ERR_TLS_HANDSHAKE_TIMEOUT" || /handshake timeout/i.test(error.message);
      const reason = timedOut ? "timeout" : "error";
      handshake?.onFailure({ reason, error, client });
    });
    setTls = (pems) => (secure as TlsServer).setSecureContext(pems);
    server = secure;
  } else {
    server = createNetServer({ allowHalfOpen: true, noDelay: true }, onClient);
  }
  const bound = await listening(server, `TCP on ${formatHostPort(address)}`, (done) => server.listen(address.port, address.host, done));
  const actual = server.address();
  return { server, bound, setTls, address: actual && typeof actual === "object" ? { host: actual.address, port: actual.port } : address };
}

/**
 * Starts a Unix domain socket listener at `path`. A socket file left by a dead process is removed;
 * a live socket or any other kind of file there is an error.
 */
export async function listenUnix(path: string, onClient: (socket: Duplex) => void): Promise<Frontend> {
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

/**
 * The addresses at which `listener` accepts clients, as told to agents so that they refuse loops:
 * the listener itself and, for a wildcard, every non-loopback address of this host's interfaces
 * (IPv4 ones for `0.0.0.0`; all for `::`, which accepts IPv4 too). Loopback is left to the agent,
 * which counts its own as the server's only when the server runs on its machine. Read at every
 * agent's hello, so that addresses added since the start are included.
 */
export function acceptingAddresses(listener: HostPort): HostPort[] {
  const bound = dialAddress(listener.host);
  if (bound?.parsed.range() !== "unspecified") return [listener];
  const hosts = interfaceAddresses()
    .filter((address) => address.parsed.range() !== "loopback" && (bound.family === 6 || address.family === 4))
    .map((address) => address.ip);
  return [listener, ...[...new Set(hosts)].map((host) => ({ host, port: listener.port }))];
}

/**
 * The TCP transport: the same streams as the QUIC engines, carried by HTTP/2 in reverse over TLS
 * on TCP with the same mutual TLS and certificates, for networks that block UDP or let TCP out only
 * through an HTTP proxy. It needs nothing but `node:tls` and `node:http2`, so it runs everywhere.
 *
 * @module
 */
import type { QuicEngine } from "../types.ts";
import { connect, peekCertificate } from "./client.ts";
import { listen } from "./server.ts";

/**
 * Why this runtime cannot carry the TCP transport, or undefined where it can (Bun, Node): in Deno
 * 2.9 node:http2 hangs a half-closed stream, and 200 parallel streams fail.
 */
export const tcpUnsupported: string | undefined =
  "Deno" in globalThis ? "the TCP transport needs Bun or Node: Deno's node:http2 hangs half-closed streams" : undefined;

/** The TCP transport as an engine. Its datagram options (payload size, congestion control) are the kernel's. */
export const tcpEngine: QuicEngine = {
  name: "tcp",
  transportCaveats: () => [],
  connect,
  listen,
  peekCertificate,
};

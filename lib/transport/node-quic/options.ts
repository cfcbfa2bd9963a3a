/**
 * `node:quic` session options for our transport settings and certificates, with what a probe of
 * Bun 1.4.5 showed its defaults get wrong for this protocol (see the notes at each setting).
 *
 * @module
 */
import { createPrivateKey } from "node:crypto";
import type { TlsMaterial, TransportCaveat, TransportOptions } from "../types.ts";
import type { BunSessionOptions } from "./bun.ts";

/**
 * Streams a `node:quic` client accepts from the server at once, whatever `maxStreams` says. Bun's
 * lsquic client keeps its built-in 100 whatever it advertises: a server that believes a larger
 * value and opens stream 101 kills the connection, and with a smaller one lsquic never returns
 * stream credit (it counts against 100), so the server can open no stream again.
 */
export const CLIENT_INCOMING_STREAMS = 100;

/**
 * Receive window of a client for streams the server opens. Bun's client advertises 0 by default,
 * and its lsquic server side sends regardless, which the client then treats as a flow-control
 * violation that kills the connection; windows below about 1 MiB failed the same way in a probe.
 */
const MIN_STREAM_WINDOW = 1 << 20;

/**
 * What Bun's node:quic does otherwise than `transport` asks. Measured through a relay: lsquic sizes
 * its packets by its own path MTU discovery (up to 1,472-byte payloads on loopback) whatever
 * `maxPayloadSize` says; the idle timeout is whole seconds; and smaller stream windows are raised
 * (see {@link MIN_STREAM_WINDOW}).
 */
export function transportCaveats(transport: TransportOptions): TransportCaveat[] {
  const caveats: TransportCaveat[] = [
    {
      option: "maxUdpPayload",
      reason: `node-quic cannot cap UDP payloads at ${transport.maxUdpPayload} bytes: lsquic in Bun sizes its own packets by path MTU discovery (from 1,252 bytes, up to 1,472)`,
    },
  ];
  if (transport.idleTimeoutMs % 1000 !== 0) {
    caveats.push({
      option: "idleTimeoutMs",
      reason: `node-quic counts the idle timeout in whole seconds: ${transport.idleTimeoutMs} ms becomes ${Math.max(1, Math.round(transport.idleTimeoutMs / 1000))} s`,
    });
  }
  if (transport.streamWindow < MIN_STREAM_WINDOW) {
    caveats.push({
      option: "streamWindow",
      reason: `node-quic needs stream windows of at least ${MIN_STREAM_WINDOW} bytes (smaller ones broke connections in Bun), not ${transport.streamWindow}`,
    });
  }
  return caveats;
}

/** The transport parameters and congestion settings both sides share. */
function transportSettings(transport: TransportOptions, maxPeerStreams: number): BunSessionOptions {
  const streamWindow = Math.max(transport.streamWindow, MIN_STREAM_WINDOW);
  return {
    transportParams: {
      initialMaxStreamDataBidiLocal: streamWindow,
      initialMaxStreamDataBidiRemote: streamWindow,
      initialMaxData: Math.max(transport.connectionWindow, streamWindow),
      initialMaxStreamsBidi: maxPeerStreams,
      initialMaxStreamsUni: 0,
      // node:quic counts this one in seconds.
      maxIdleTimeout: Math.max(1, Math.round(transport.idleTimeoutMs / 1000)),
    },
    keepAlive: transport.keepAliveMs > 0 ? transport.keepAliveMs : undefined,
    maxPayloadSize: transport.maxUdpPayload,
    cc: transport.congestionControl,
  };
}

/** Options of a client session presenting `tls.cert` and verifying the server for `serverName`. */
export function clientSessionOptions(tls: TlsMaterial, transport: TransportOptions, serverName: string): BunSessionOptions {
  return {
    ...transportSettings(transport, CLIENT_INCOMING_STREAMS),
    alpn: transport.alpn,
    servername: serverName,
    ca: [tls.ca],
    keys: [createPrivateKey(Buffer.from(tls.key))],
    certs: [tls.cert],
    // One UDP socket per connection, like the quiche engine: an agent's connections fail apart.
    reuseEndpoint: false,
  };
}

/**
 * Options of a server requiring client certificates signed by `tls.ca`. Bun reads `ca` and
 * `verifyClient` only at the top level: inside an `sni` entry they are ignored and every client
 * gets in.
 */
export function serverSessionOptions(tls: TlsMaterial, transport: TransportOptions): BunSessionOptions {
  return {
    ...transportSettings(transport, transport.maxStreams),
    alpn: [transport.alpn],
    sni: { "*": { keys: [createPrivateKey(Buffer.from(tls.key))], certs: [tls.cert] } },
    ca: [tls.ca],
    verifyClient: true,
  };
}

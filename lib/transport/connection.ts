/**
 * What every engine's connection shares: holding streams the peer opens until someone listens,
 * and reading the peer's certificate.
 *
 * @module
 */
import { X509Certificate } from "node:crypto";
import { EventEmitter } from "node:events";
import type { ConnectionEvents, ConnectionStats, QuicConnection, QuicStream } from "./types.ts";

const ignore = () => {};

/** Base of the engines' connections; an engine implements the transport, this the bookkeeping. */
export abstract class BaseConnection extends EventEmitter<ConnectionEvents> implements QuicConnection {
  readonly peer: string;
  peerCertificate: X509Certificate | undefined;
  peerSubject = "";
  #held: QuicStream[] = [];

  constructor(peer: string) {
    super();
    this.peer = peer;
    this.on("newListener", (event) => {
      // The listener is added after this event: hand over held streams once it is in place.
      if (event === "stream" && this.#held.length > 0) queueMicrotask(() => this.#releaseHeld());
    });
  }

  abstract readonly closed: boolean;
  abstract readonly streamCount: number;
  abstract readonly incomingStreamLimit: number;
  abstract openStream(): Promise<QuicStream>;
  abstract close(code?: number, reason?: string): void;
  abstract stats(): ConnectionStats;

  /**
   * Announces a stream the peer opened, or holds it until a `stream` listener is added: a stream
   * is never dropped because it arrived in the same turn as the handshake's completion.
   */
  protected announceStream(stream: QuicStream): void {
    if (this.#held.length === 0 && this.listenerCount("stream") > 0) {
      this.emit("stream", stream);
      return;
    }
    // A held stream can fail before anyone listens (the connection closes): do not crash on it.
    stream.on("error", ignore);
    this.#held.push(stream);
  }

  /** Records the peer's leaf certificate (DER). */
  protected setPeerCertificate(der: Uint8Array | undefined): void {
    if (der === undefined || der.length === 0) return;
    try {
      this.peerCertificate = new X509Certificate(der);
      this.peerSubject = this.peerCertificate.subject.replaceAll("\n", ",");
    } catch {
      this.peerSubject = "(unparsable certificate)";
    }
  }

  #releaseHeld(): void {
    while (this.#held.length > 0 && this.listenerCount("stream") > 0) {
      const stream = this.#held.shift() as QuicStream;
      stream.off("error", ignore);
      this.emit("stream", stream);
    }
  }
}

/**
 * Resolves once every one of `connections` has gone quiet: no packet sent or received in two
 * windows in a row of four round trips (at least 200 ms each), so the peer holds everything the
 * tunnels that just ended wrote, which a close would throw away in flight. A window counts only if
 * its timer fired on time: a starved event loop has not read the datagrams waiting for it. An
 * unacknowledged packet is probed again within a window or two, so a lull the peer causes is seen
 * as traffic. Gives up after `timeoutMs`.
 */
export async function settled(connections: readonly QuicConnection[], options: { timeoutMs: number }): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  await Promise.all(connections.map((connection) => quiet(connection, deadline)));
}

const QUIET_WINDOWS = 2;
const MIN_QUIET_WINDOW_MS = 200;

async function quiet(connection: QuicConnection, deadline: number): Promise<void> {
  const packets = () => {
    const stats = connection.stats();
    return stats.packetsSent + stats.packetsReceived;
  };
  let before = packets();
  let quietWindows = 0;
  while (quietWindows < QUIET_WINDOWS && Date.now() < deadline) {
    const windowMs = Math.min(Math.max(MIN_QUIET_WINDOW_MS, 4 * connection.stats().rttMs), deadline - Date.now());
    const startedAt = Date.now();
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    if (connection.closed) return;
    const onTime = Date.now() - startedAt < windowMs * 1.5;
    const now = packets();
    quietWindows = now === before && onTime ? quietWindows + 1 : 0;
    before = now;
  }
}

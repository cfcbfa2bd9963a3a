/**
 * One QUIC connection of the quiche engine. A datagram only feeds `conn.recv`; the expensive part
 * (reading streams, refilling writes, emitting packets, re-arming the timer) runs once per
 * event-loop turn for every connection that changed (flushing per datagram was measured six times
 * slower).
 *
 * @module
 */
import { formatHostPort } from "../../hostport.ts";
import { BaseConnection } from "../connection.ts";
import { describeClose, QuicError, tlsAlertCode } from "../errors.ts";
import { type HandshakeDeadline, handshakeDeadline } from "../handshake-deadline.ts";
import type { ConnectionStats, TransportOptions } from "../types.ts";
import type { Connection, ConnectionError } from "./binding.ts";
import type { PacketProducer } from "./datagram.ts";
import { packetsInDatagram } from "./packet.ts";
import { QuicheStream, type StreamHost } from "./stream.ts";
import { StreamAborts } from "./stream-aborts.ts";

/** Addresses of a received datagram, as quiche wants them (IP literals, exact matches). */
export interface PathInfo {
  from: { host: string; port: number };
  to: { host: string; port: number };
}

/**
 * Copies of a FIN that go out in separate packets before quiche may forget the stream. quiche 0.18
 * counts a stream's send side complete once its data is acked, even if the packet carrying a
 * separate FIN was lost or never left; once the peer's FIN has been read too it forgets the stream
 * and never sends that FIN again (cloudflare/quiche#2525), and the peer waits forever. A stream is
 * at risk from the moment both FINs exist, so the peer's FIN is read only once this many copies
 * have left in packets (a copy the congestion window holds back does not count): all of them lost
 * has a probability of loss^3 instead of loss.
 */
const FIN_COPIES_BEFORE_COLLECTION = 3;
/** Further copies while quiche still holds the stream, at doubling intervals from a few RTTs. */
const FIN_REPEATS = 6;
const FIN_REPEAT_MIN_MS = 10;
const EMPTY = new Uint8Array(0);
/**
 * A server pings while streams are open, though it sends no keep-alives of its own otherwise (an
 * idle agent is the agent's call). quiche 0.18 dates each packet by its pacer's release time
 * (`SendInfo.at`), which the addon does not let us keep: packets leave when built, and after a
 * busy event loop has inflated the RTT, bursts outran the pacing rate and the dates ran seconds
 * ahead of the clock, loss timers with them. An agent sending into a full congestion window then
 * waited seconds for a lost tail, sending nothing, not even its keep-alive (a PING waits for the
 * window), while the server, with nothing to send, sent nothing either: past the 5 s idle timeout
 * both ends gave up (64 MiB each way through 5% loss on a busy node: stalls of 0.6-4.8 s in half
 * of 12 runs on Node, one fatal). An ACK never waits for the window, so the agent answers this
 * PING, and the connection outlives the stall.
 */
const SERVER_KEEP_ALIVE_WITH_STREAMS_MS = 2_000;

/** One flush per event-loop turn for every connection that received packets or has writes queued. */
const dirty = new Set<QuicheConnection>();
let flushScheduled = false;
function scheduleFlush(connection: QuicheConnection): void {
  dirty.add(connection);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushDirty);
  }
}
function flushDirty(): void {
  flushScheduled = false;
  const connections = [...dirty];
  dirty.clear();
  for (const connection of connections) {
    // Stream events run their listeners inside the flush: one that throws must not leave the other
    // connections unflushed (they would stall). Its error is rethrown on its own.
    try {
      connection.flush();
    } catch (err) {
      scheduleFlush(connection);
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

/** Options of a {@link QuicheConnection}. */
export interface QuicheConnectionOptions {
  isServer: boolean;
  /** `host:port` of the peer. */
  peer: string;
  /** Sends the packets the connection produces. */
  send: (produce: PacketProducer) => void;
  transport: TransportOptions;
  /**
   * Called once when the handshake is complete: for a client, once the server confirmed it, unless
   * `confirmed` is false (a look at the server's certificate needs no more).
   */
  onEstablished: () => void;
  confirmed?: boolean;
}

interface FinGuard {
  /** Copies of the FIN queued in quiche and followed by at least one packet leaving. */
  sent: number;
  dueAt: number;
  intervalMs: number;
}

/** A connection of the quiche engine. Emits `stream` and `close` as {@link BaseConnection} says. */
export class QuicheConnection extends BaseConnection implements StreamHost {
  readonly native: Connection;
  established = false;
  closed = false;
  readonly #isServer: boolean;
  readonly #sendPackets: (produce: PacketProducer) => void;
  readonly #produce: PacketProducer;
  readonly #options: TransportOptions;
  readonly #onEstablished: () => void;
  readonly #streams = new Map<number, QuicheStream>();
  readonly #wantWrite = new Set<QuicheStream>();
  readonly #wantRead = new Set<QuicheStream>();
  readonly #finGuards = new Map<QuicheStream, FinGuard>();
  #finTimer: ReturnType<typeof setTimeout> | undefined;
  #nextLocalStream: number;
  #highestRemoteStream = -1;
  #remoteGaps = new Set<number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #deadline = 0;
  #keepAlive: ReturnType<typeof setInterval> | undefined;
  #handshakeDeadline: HandshakeDeadline;
  /** Datagrams quiche took without an error (a Retry among them, which its packet count leaves out). */
  #datagramsTaken = 0;
  #closeError: QuicError | undefined;
  #confirmedByServer: boolean;
  #rttMs = 0;
  #rttReadAt = 0;
  readonly #aborts: StreamAborts;
  #packetsProduced = 0;
  /** A server's first path: the only one its quiche is told of (see `#peerAt`). */
  #firstPath: PathInfo | undefined;
  /**
   * Where a server's peer is now. A NAT that rebinds moves the agent to a new port or address, and
   * quiche 0.18's own migration then stalls every stream with data in flight: packets sent on the
   * old path after its last acknowledgement are never declared lost (each path's loss detection
   * runs only on acks of its own packets), so their data is never sent again. So quiche keeps
   * seeing the first path, and once the handshake is done, packets go wherever the first copy of
   * a new 1-RTT packet came from. What that gives up is quiche's validation of the new address
   * (RFC 9000 §8.2, §9.3.3): an attacker who sees the agent's packets and forwards each copy faster
   * from elsewhere draws the server's packets there for as long as it wins every race, and an old
   * packet arriving late from the old address moves them back until the next one.
   */
  #peerAt: { host: string; port: number } | undefined;

  constructor(native: Connection, options: QuicheConnectionOptions) {
    super(options.peer);
    this.native = native;
    this.#isServer = options.isServer;
    this.#sendPackets = options.send;
    this.#onEstablished = options.onEstablished;
    this.#confirmedByServer = options.confirmed === false;
    this.#produce = (buffer) => {
      let result: ReturnType<Connection["send"]>;
      try {
        result = native.send(buffer);
      } catch {
        return null;
      }
      if (result === null) return null;
      this.#packetsProduced++;
      const to = this.#peerAt ?? result[1].to;
      return { length: result[0], host: to.host, port: to.port };
    };
    this.#options = options.transport;
    this.#aborts = new StreamAborts(native, { rttMs: () => this.#rtt(performance.now()), onReset: () => scheduleFlush(this) });
    this.#nextLocalStream = options.isServer ? 1 : 0;
    this.#handshakeDeadline = handshakeDeadline({
      idleMs: options.transport.handshakeTimeoutMs,
      received: () => this.#datagramsTaken,
      onTimeout: (why) => {
        if (!this.established) this.#fail(new QuicError(`QUIC handshake with ${this.peer} ${why}`));
      },
    });
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  get incomingStreamLimit(): number {
    return this.#options.maxStreams;
  }

  /** Feeds one received datagram to quiche; the work it causes happens in the next flush. */
  receive(datagram: Uint8Array, path: PathInfo): void {
    if (this.closed) return;
    // A client is connected only once the server has confirmed the handshake: until then the server
    // may still refuse our certificate. Its confirmation (HANDSHAKE_DONE) and everything after it
    // travel in short-header packets, which a refusing server never sends; so the first datagram
    // whose packets all decrypt and whose last packet is a short-header one confirms it.
    const confirming = !this.#isServer && !this.#confirmedByServer && this.native.isEstablished();
    let fromElsewhere = false;
    if (this.#isServer) {
      this.#firstPath ??= path;
      this.#peerAt ??= path.from;
      // Only once established: Initial packets are protected by keys anyone watching can derive.
      fromElsewhere = this.established && (path.from.port !== this.#peerAt.port || path.from.host !== this.#peerAt.host);
    }
    const before = confirming || fromElsewhere ? this.native.stats().recv : 0;
    try {
      // A server's quiche always sees the first path: see `#peerAt`.
      this.native.recv(datagram, this.#firstPath ?? path);
      this.#datagramsTaken++;
    } catch {
      // A packet quiche rejects (undecryptable, duplicate) is dropped, as QUIC requires.
    }
    if (fromElsewhere && this.native.stats().recv > before) {
      this.#peerAt = path.from;
      this.emit("moved", formatHostPort(path.from));
    }
    if (confirming) {
      const packets = packetsInDatagram(datagram);
      if (packets.lastIsShort && this.native.stats().recv - before === packets.count) this.#confirmedByServer = true;
    }
    scheduleFlush(this);
  }

  async openStream(): Promise<QuicheStream> {
    if (!this.established || this.closed || this.native.isDraining()) {
      throw new QuicError(`QUIC connection to ${this.peer} is not open`);
    }
    if (this.native.peerStreamsLeftBidi() === 0) {
      throw new QuicError(`stream limit reached on QUIC connection to ${this.peer}`);
    }
    const id = this.#nextLocalStream;
    this.#nextLocalStream += 4;
    // Setting a priority creates the stream inside quiche, so the stream limit accounts for it now.
    this.native.streamPriority(id, 127, true);
    const stream = new QuicheStream(this, id);
    this.#streams.set(id, stream);
    return stream;
  }

  close(code = 0, reason = ""): void {
    if (this.closed) return;
    try {
      this.native.close(true, code, Buffer.from(reason));
    } catch {
      // already closing
    }
    this.flush();
  }

  stats(): ConnectionStats {
    const stats = this.native.stats();
    const paths = this.native.pathStats();
    const path = paths.find((candidate) => candidate.active) ?? paths[0];
    return {
      rttMs: path?.rtt ?? 0,
      cwndBytes: path?.cwnd ?? 0,
      packetsSent: stats.sent,
      packetsReceived: stats.recv,
      packetsLost: stats.lost,
      bytesSent: stats.sentBytes,
      bytesReceived: stats.recvBytes,
    };
  }

  markDirty(): void {
    scheduleFlush(this);
  }

  wantWrite(stream: QuicheStream): void {
    this.#wantWrite.add(stream);
  }

  wantRead(stream: QuicheStream): void {
    this.#wantRead.add(stream);
    scheduleFlush(this);
  }

  finWritten(stream: QuicheStream): void {
    try {
      // First in line among the streams, so the FIN leaves in the very next packet.
      this.native.streamPriority(stream.id, 0, false);
    } catch {
      // quiche already forgot the stream: nothing is left to hurry
    }
    this.#finGuards.set(stream, { sent: 0, dueAt: 0, intervalMs: 0 });
    this.#sendFinCopy(stream);
    // The peer's FIN was read already: quiche may forget the stream as soon as our data is acked.
    if (stream.readDone) this.#sendFinCopies(stream);
    this.#scheduleFinRepeat();
  }

  mayReadAfterFin(stream: QuicheStream): boolean {
    // Reading the peer's FIN lets quiche forget the stream: our FIN must be out in copies first.
    return this.#sendFinCopies(stream);
  }

  get streamWindow(): number {
    return this.#options.streamWindow;
  }

  readerStalled(stream: QuicheStream): void {
    this.#aborts.watch(stream);
  }

  resetLater(id: number): void {
    this.#aborts.resetLater(id);
  }

  forget(stream: QuicheStream): void {
    this.#streams.delete(stream.id);
    this.#wantWrite.delete(stream);
    this.#wantRead.delete(stream);
    if (!stream.writeDone) this.#finGuards.delete(stream);
    if (!this.closed) scheduleFlush(this);
  }

  /** Runs the connection: deliver stream data, refill writes, send packets, re-arm the timer. */
  flush(): void {
    if (this.closed) return;
    const native = this.native;
    if (!this.established && native.isEstablished() && (this.#isServer || this.#confirmedByServer) && !native.isDraining()) {
      this.#establish();
    }
    if (this.established) {
      if (this.#wantRead.size > 0) {
        const readers = [...this.#wantRead];
        this.#wantRead.clear();
        for (const stream of readers) stream.deliver();
      }
      for (const id of native.readable()) this.#onReadable(id);
      if (this.#wantWrite.size > 0) {
        const writers = [...this.#wantWrite];
        this.#wantWrite.clear();
        for (const stream of writers) stream.sendPending();
      }
    }
    this.#sendPackets(this.#produce);
    if (native.isClosed()) this.#onClosed();
    else this.#armTimer();
  }

  /** Queues one more copy of the stream's FIN and sends it; drops the guard once quiche forgot the stream. */
  #sendFinCopy(stream: QuicheStream): void {
    const guard = this.#finGuards.get(stream);
    if (guard === undefined || this.closed) return;
    let queued: boolean;
    try {
      // On a stream quiche still holds, an empty write with FIN queues the FIN again.
      queued = this.native.streamSend(stream.id, EMPTY, true) !== null;
    } catch {
      queued = false;
    }
    if (!queued) {
      this.#finGuards.delete(stream);
      return;
    }
    const produced = this.#packetsProduced;
    this.#sendPackets(this.#produce);
    if (this.#packetsProduced > produced) guard.sent++;
  }

  /**
   * Sends copies of the stream's FIN until {@link FIN_COPIES_BEFORE_COLLECTION} have left, or the
   * congestion window holds the next one back. True once that many have left, or quiche has
   * forgotten the stream already.
   */
  #sendFinCopies(stream: QuicheStream): boolean {
    for (;;) {
      const guard = this.#finGuards.get(stream);
      if (guard === undefined || guard.sent >= FIN_COPIES_BEFORE_COLLECTION) return true;
      const sent = guard.sent;
      this.#sendFinCopy(stream);
      if (this.#finGuards.get(stream) === guard && guard.sent === sent) return false;
    }
  }

  /** Timed copies while quiche still holds the stream: a FIN lost later is sent again too. */
  #scheduleFinRepeat(): void {
    if (this.#finTimer !== undefined || this.#finGuards.size === 0) return;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const guard of this.#finGuards.values()) {
      if (guard.intervalMs === 0) {
        guard.intervalMs = Math.max(FIN_REPEAT_MIN_MS, 2 * this.#rtt(now));
        guard.dueAt = now + guard.intervalMs;
      }
      next = Math.min(next, guard.dueAt);
    }
    this.#finTimer = setTimeout(() => this.#repeatFins(), Math.max(1, next - now));
  }

  #repeatFins(): void {
    this.#finTimer = undefined;
    if (this.closed) return;
    const now = performance.now();
    for (const [stream, guard] of this.#finGuards) {
      if (guard.dueAt > now) continue;
      if (guard.sent >= FIN_COPIES_BEFORE_COLLECTION + FIN_REPEATS) {
        this.#finGuards.delete(stream);
        continue;
      }
      this.#sendFinCopy(stream);
      guard.intervalMs *= 2;
      guard.dueAt = now + guard.intervalMs;
    }
    this.#scheduleFinRepeat();
  }

  /** Smoothed RTT in ms, read from quiche at most every 100 ms. */
  #rtt(now: number): number {
    if (now - this.#rttReadAt > 100) {
      this.#rttReadAt = now;
      this.#rttMs = this.stats().rttMs;
    }
    return this.#rttMs;
  }

  #armTimer(): void {
    const timeout = this.native.timeout();
    if (timeout === null) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      return;
    }
    const deadline = Date.now() + timeout;
    if (this.#timer !== undefined && deadline === this.#deadline) return;
    clearTimeout(this.#timer);
    this.#deadline = deadline;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.native.onTimeout();
      this.flush();
    }, timeout);
  }

  #establish(): void {
    const chain = this.native.peerCertChain();
    if (this.#isServer && (chain === null || chain.length === 0)) {
      // quiche requests but does not require a client certificate: enforce it here.
      this.native.close(false, tlsAlertCode(116), Buffer.from("client certificate required"));
      this.#closeError = new QuicError(`peer ${this.peer} presented no client certificate`);
      return;
    }
    this.setPeerCertificate(chain?.[0]);
    this.established = true;
    this.#handshakeDeadline.cancel();
    const keepAliveMs = this.#options.keepAliveMs;
    const period = keepAliveMs > 0 ? keepAliveMs : this.#isServer ? SERVER_KEEP_ALIVE_WITH_STREAMS_MS : 0;
    if (period > 0) {
      this.#keepAlive = setInterval(() => {
        if (keepAliveMs === 0 && this.#streams.size === 0) return;
        this.native.sendAckEliciting();
        scheduleFlush(this);
      }, period);
    }
    this.#onEstablished();
  }

  #onReadable(id: number): void {
    let stream = this.#streams.get(id);
    if (stream === undefined) {
      if (!this.#acceptRemoteStream(id)) {
        this.#discard(id);
        return;
      }
      stream = new QuicheStream(this, id);
      this.#streams.set(id, stream);
      this.announceStream(stream);
    }
    stream.deliver();
  }

  /** True when `id` is a stream the peer opens now for the first time (ids may arrive out of order). */
  #acceptRemoteStream(id: number): boolean {
    const remoteBit = this.#isServer ? 0 : 1;
    if ((id & 1) !== remoteBit || (id & 2) !== 0) return false;
    if (id > this.#highestRemoteStream) {
      const first = this.#highestRemoteStream < 0 ? remoteBit : this.#highestRemoteStream + 4;
      for (let gap = first; gap < id; gap += 4) this.#remoteGaps.add(gap);
      this.#highestRemoteStream = id;
      return true;
    }
    return this.#remoteGaps.delete(id);
  }

  /** Reads and drops what a stream we no longer track holds. */
  #discard(id: number): void {
    const sink = Buffer.allocUnsafe(16 * 1024);
    try {
      while (this.native.streamRecv(id, sink) !== null);
    } catch {
      // reset or unknown: nothing to keep
    }
  }

  #fail(error: QuicError): void {
    if (this.closed) return;
    this.#closeError ??= error;
    try {
      this.native.close(false, 0, Buffer.from(error.message.slice(0, 100)));
    } catch {
      // already closing
    }
    this.#sendPackets(this.#produce);
    this.#onClosed();
  }

  #onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.#timer);
    this.#handshakeDeadline.cancel();
    clearTimeout(this.#finTimer);
    clearInterval(this.#keepAlive);
    this.#finGuards.clear();
    this.#aborts.clear();
    dirty.delete(this);
    const error = this.#closeError ?? this.#describeClose();
    for (const stream of [...this.#streams.values()]) {
      stream.destroy(new QuicError(`QUIC connection to ${this.peer} closed${error ? `: ${error.message}` : ""}`));
    }
    this.emit("close", error);
  }

  #describeClose(): QuicError | undefined {
    const describe = (error: ConnectionError) =>
      describeClose({ isApp: error.isApp, code: error.errorCode, reason: Buffer.from(error.reason).toString("utf8") });
    const peerError = this.native.peerError();
    if (peerError && peerError.errorCode !== 0) {
      return new QuicError(`closed by peer ${this.peer}: ${describe(peerError)}`, { code: peerError.errorCode });
    }
    const localError = this.native.localError();
    if (localError && localError.errorCode !== 0) {
      return new QuicError(`closed locally: ${describe(localError)}`, { code: localError.errorCode });
    }
    if (this.native.isTimedOut()) {
      return new QuicError(`QUIC connection to ${this.peer} timed out (no packets for ${this.#options.idleTimeoutMs} ms)`);
    }
    return undefined;
  }
}

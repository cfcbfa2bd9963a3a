/**
 * A `node:quic` session as a {@link QuicConnection}.
 *
 * @module
 */
// @ts-ignore: Deno ships no node:quic (nor its types); only Bun loads this engine.
import type { QuicStream as NodeStream, QuicSession } from "node:quic";
import { BaseConnection } from "../connection.ts";
import { describeClose, QuicError } from "../errors.ts";
import type { ConnectionStats, QuicStream } from "../types.ts";
import { bunSession } from "./bun.ts";
import { NodeQuicStream, type StreamOwner } from "./stream.ts";

const NS_PER_MS = 1_000_000;
/**
 * How long a new stream waits for the peer's stream credit before it counts as a limit reached: the
 * server then tries the agent's next connection, so a long wait on each (lsquic returns credit in
 * late batches after many streams ended) would add up.
 */
const CREDIT_WAIT_MS = 200;
/** How long a session whose streams ended without FINs gets to report its own close. */
const LOST_SESSION_GRACE_MS = 1000;

/** Resolves true once `stream` has an id, or false after `ms`. */
async function idWithin(stream: NodeStream, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (stream.id === null && !stream.destroyed && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return stream.id !== null;
}

/**
 * Turns the error a node:quic session ended with into a QuicError in the quiche engine's words:
 * `by` says who ended it, or that it was a handshake this side refused.
 */
export function describeSessionError(err: unknown, peer: string, by: "peer" | "local" | "handshake"): QuicError {
  const error = err as { errorCode?: bigint; type?: string; reason?: string; message?: string };
  if (typeof error?.errorCode !== "bigint") return new QuicError(`QUIC connection to ${peer}: ${error?.message ?? err}`, { cause: err });
  const code = Number(error.errorCode);
  const reason = error.reason ?? /: (.*)$/.exec(error.message ?? "")?.[1] ?? "";
  // Code 0 with a reason is this side's own certificate check failing, not the peer's word.
  if (code === 0 && /certificate|hostname/i.test(reason)) {
    return new QuicError(`certificate of ${peer} refused: ${reason}`, { code, cause: err });
  }
  const what = describeClose({
    isApp: error.type === "application",
    code,
    reason: reason === "handshake failed" ? undefined : reason || undefined,
  });
  const text = { peer: `closed by peer ${peer}: ${what}`, local: `closed locally: ${what}`, handshake: `handshake failed: ${what}` }[by];
  return new QuicError(text, { code, cause: err });
}

/** One node:quic session, established, with a verified peer certificate. */
export class NodeQuicConnection extends BaseConnection implements StreamOwner {
  readonly #session: QuicSession;
  readonly #streams = new Set<NodeQuicStream>();
  /** The streams of {@link #streams} this side opened. */
  readonly #opened = new Set<NodeQuicStream>();
  readonly #maxOpenedStreams: number;
  readonly #incomingStreamLimit: number;
  #closedLocally = false;
  #lost: QuicError | undefined;
  closed = false;

  /**
   * `maxOpenedStreams` bounds the streams this side opens at once (the peer's credit);
   * `incomingStreamLimit` is what this side granted the peer.
   */
  constructor(session: QuicSession, options: { peer: string; maxOpenedStreams: number; incomingStreamLimit: number }) {
    super(options.peer);
    this.#session = session;
    this.#maxOpenedStreams = options.maxOpenedStreams;
    this.#incomingStreamLimit = options.incomingStreamLimit;
    this.setPeerCertificate(session.peerCertificate?.raw);
    session.closed.then(
      () => this.#onClosed(undefined),
      (err) => this.#onClosed(err),
    );
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  get incomingStreamLimit(): number {
    return this.#incomingStreamLimit;
  }

  /** Takes a stream the peer opened. */
  accept(stream: NodeStream): void {
    if (this.closed) {
      stream.destroy();
      return;
    }
    this.announceStream(this.#track(stream, false));
  }

  async openStream(): Promise<QuicStream> {
    if (this.closed || this.#lost || this.#session.destroyed || this.#session.closing) {
      throw new QuicError(`QUIC connection to ${this.peer} is not open`);
    }
    if (this.#opened.size >= this.#maxOpenedStreams) throw new QuicError(`stream limit reached on QUIC connection to ${this.peer}`);
    let stream: NodeStream;
    try {
      stream = await this.#session.createBidirectionalStream();
    } catch (err) {
      throw new QuicError(`cannot open a stream on the QUIC connection to ${this.peer}: ${(err as Error).message}`, { cause: err });
    }
    // A stream without an id waits for the peer's stream credit. lsquic returns credit in batches,
    // so it may come within milliseconds; a tunnel waits that long, not for as long as it takes.
    if (stream.id === null && !(await idWithin(stream, CREDIT_WAIT_MS))) {
      stream.destroy();
      throw new QuicError(`stream limit reached on QUIC connection to ${this.peer}`);
    }
    return this.#track(stream, true);
  }

  close(code = 0, reason = ""): void {
    if (this.closed || this.#closedLocally) return;
    this.#closedLocally = true;
    this.#lost ??= new QuicError(`closed locally: ${describeClose({ isApp: true, code, reason })}`, { code });
    // Destroying with the code tells the peer at once; a graceful close() waits about a second.
    this.#session.destroy(undefined, { code: BigInt(code), type: "application", reason });
  }

  stats(): ConnectionStats {
    const stats = bunSession(this.#session).stats;
    return {
      rttMs: Number(stats.smoothedRtt) / NS_PER_MS,
      cwndBytes: Number(stats.cwnd),
      packetsSent: Number(stats.pktSent),
      packetsReceived: Number(stats.pktRecv),
      packetsLost: Number(stats.pktLost),
      bytesSent: Number(stats.bytesSent),
      bytesReceived: Number(stats.bytesReceived),
    };
  }

  lost(stream: NodeQuicStream): void {
    // node:quic reports the session's end a few milliseconds after its streams': from now on no new
    // stream is opened here and every stream fails. The session's own close, with its reason,
    // follows; should it not, the session is ended here after a second.
    if (this.#lost === undefined) {
      this.#lost = new QuicError(`QUIC connection to ${this.peer} closed (stream ${stream.id} ended without its FIN)`);
      setTimeout(() => this.#session.destroy(), LOST_SESSION_GRACE_MS).unref?.();
    }
    stream.destroy(this.#lost);
  }

  lostReason(): QuicError | undefined {
    if (this.#lost === undefined && (this.#session.destroyed || this.#session.closing)) {
      this.#lost = new QuicError(`QUIC connection to ${this.peer} is closing`);
    }
    return this.#lost;
  }

  forget(stream: NodeQuicStream): void {
    this.#streams.delete(stream);
    this.#opened.delete(stream);
  }

  #track(stream: NodeStream, local: boolean): NodeQuicStream {
    const wrapped = new NodeQuicStream(stream, this);
    this.#streams.add(wrapped);
    if (local) this.#opened.add(wrapped);
    return wrapped;
  }

  #onClosed(err: unknown): void {
    if (this.closed) return;
    this.closed = true;
    const error = this.#closeReason(err);
    this.#lost ??= error ?? new QuicError(`QUIC connection to ${this.peer} closed`);
    for (const stream of [...this.#streams]) {
      stream.destroy(new QuicError(`QUIC connection to ${this.peer} closed${error ? `: ${error.message}` : ""}`));
    }
    this.emit("close", error);
  }

  /** Why the session ended, or undefined for a clean close of this side's. */
  #closeReason(err: unknown): QuicError | undefined {
    if (this.#closedLocally) return err === undefined ? undefined : describeSessionError(err, this.peer, "local");
    if (err !== undefined) return describeSessionError(err, this.peer, "peer");
    // node:quic resolves `closed` without an error when the peer went silent (idle timeout), and
    // when this side ended a session it found lost.
    return this.#lost ?? new QuicError(`QUIC connection to ${this.peer} timed out or was closed by the peer`);
  }
}

/**
 * The slow half of aborting a quiche stream in order (see `QuicheStream`'s `_destroy`): the
 * streams whose RESET_STREAM waits until the peer has had time to read out what it holds, and the
 * stalled readers, watched for the peer's STOP_SENDING. quiche 0.18 drops the unread bytes of a
 * stream its peer resets without crediting the connection's receive window, so a stalled reader
 * whose peer resets it first costs the connection that window for good; a thousand clients that
 * never read once left a connection unable to carry a byte. One timer per connection, running only
 * while there is something to do.
 *
 * @module
 */
import { STREAM_CANCELLED } from "../../protocol.ts";
import { type Connection, quiche } from "./binding.ts";

/** How often stalled readers are checked for a stopped peer, and due resets sent. */
export const ABORT_CHECK_MS = 25;
/** The least time a peer gets between our STOP_SENDING and our RESET_STREAM. */
export const RESET_DELAY_MIN_MS = 200;

/** A stalled reader, as far as the watch needs it. */
export interface WatchedReader {
  readonly readPaused: boolean;
  readonly destroyed: boolean;
  /** Ends the stream if the peer stopped it. */
  checkStopped(): void;
}

/** Options of {@link StreamAborts}. */
export interface StreamAbortsOptions {
  /** The connection's current round-trip time: a peer gets a few of them to read out. */
  rttMs(): number;
  /** A reset was queued in quiche: packets should go out. */
  onReset(): void;
}

/** Delayed resets and watched readers of one connection; see the module documentation. */
export class StreamAborts {
  readonly #native: Pick<Connection, "streamShutdown">;
  readonly #options: StreamAbortsOptions;
  /** Stream id to the time its RESET_STREAM is due. */
  readonly #resets = new Map<number, number>();
  readonly #readers = new Set<WatchedReader>();
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(native: Pick<Connection, "streamShutdown">, options: StreamAbortsOptions) {
    this.#native = native;
    this.#options = options;
  }

  /** Resets our send side of stream `id` a few round trips from now. */
  resetLater(id: number): void {
    this.#resets.set(id, performance.now() + Math.max(RESET_DELAY_MIN_MS, 4 * this.#options.rttMs()));
    this.#arm();
  }

  /** Watches `reader` for the peer's STOP_SENDING until it reads again or is destroyed. */
  watch(reader: WatchedReader): void {
    this.#readers.add(reader);
    this.#arm();
  }

  /** Forgets everything: the connection is closed. */
  clear(): void {
    this.#resets.clear();
    this.#readers.clear();
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The number of resets waiting and readers watched (for tests). */
  get size(): { resets: number; readers: number } {
    return { resets: this.#resets.size, readers: this.#readers.size };
  }

  #arm(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.tick(), ABORT_CHECK_MS);
    this.#timer.unref?.();
  }

  /** Checks the watched readers and sends the resets that are due; the timer's work. */
  tick(now = performance.now()): void {
    for (const reader of this.#readers) {
      if (reader.destroyed || !reader.readPaused) this.#readers.delete(reader);
      else reader.checkStopped();
    }
    let reset = false;
    for (const [id, due] of this.#resets) {
      if (due > now) continue;
      this.#resets.delete(id);
      try {
        this.#native.streamShutdown(id, quiche.Shutdown.Write, STREAM_CANCELLED);
        reset = true;
      } catch {
        // the peer's STOP_SENDING came first, and quiche has reset the stream itself
      }
    }
    if (reset) this.#options.onReset();
    if (this.#resets.size === 0 && this.#readers.size === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}

/**
 * When a QUIC handshake gives up (`--handshake-timeout`), for both engines and both sides. Like
 * quic-go's handshake idle timeout, what counts is progress: a handshake fails once no packet has
 * come from the peer for the timeout (UDP blocked, a peer gone or a replica dead: the agent moves
 * on at once), and in any case after {@link HANDSHAKE_CAP_FACTOR} times the timeout. A fixed 2 s
 * in all failed every handshake over a path whose round trip is a second (a geostationary
 * satellite link takes ~0.6 s; a handshake with Retry, confirmed, takes three round trips).
 *
 * @module
 */

/** How many times `--handshake-timeout` a handshake may take in all while packets keep coming. */
export const HANDSHAKE_CAP_FACTOR = 5;

/** A running deadline. */
export interface HandshakeDeadline {
  /** The handshake completed or failed otherwise: the deadline ends. */
  cancel(): void;
}

/**
 * Calls `onTimeout` with why once the handshake has made no progress for `idleMs` (no packet
 * counted by `received`, a running count), or has run `idleMs` times {@link HANDSHAKE_CAP_FACTOR}.
 * The idle time is checked at `idleMs` intervals, so a handshake that stalls right after a packet
 * gives up between one and two timeouts later.
 */
export function handshakeDeadline(options: {
  idleMs: number;
  received: () => number;
  onTimeout: (why: string) => void;
}): HandshakeDeadline {
  const { idleMs, received, onTimeout } = options;
  const started = performance.now();
  const capMs = idleMs * HANDSHAKE_CAP_FACTOR;
  let seen = received();
  let timer: ReturnType<typeof setTimeout>;
  const check = () => {
    const elapsed = performance.now() - started;
    const count = received();
    // The cap first: the last window may be shorter than `idleMs`, too short to judge silence by.
    if (elapsed >= capMs - 1) return onTimeout(`timed out after ${Math.round(elapsed)} ms (${HANDSHAKE_CAP_FACTOR} times ${idleMs} ms)`);
    if (count === seen) return onTimeout(`timed out after ${Math.round(elapsed)} ms: no packet from the peer for ${idleMs} ms`);
    seen = count;
    timer = setTimeout(check, Math.min(idleMs, capMs - elapsed));
  };
  timer = setTimeout(check, idleMs);
  return { cancel: () => clearTimeout(timer) };
}

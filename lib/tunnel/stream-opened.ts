/**
 * The passthrough agent's side of {@link STREAM_OPENED}: the bytes our server writes first on a
 * stream to it, so that the stream exists before the client speaks. They are taken off; a stream
 * that does not begin with them (a server that does not write them: the reference's, or ours
 * before it could) is passed on whole.
 *
 * @module
 */
import type { Duplex } from "node:stream";
import { STREAM_OPENED } from "../protocol.ts";

/**
 * Takes {@link STREAM_OPENED} off the front of the paused `stream`, and leaves everything else
 * unread on it. The first chunk decides, nearly always: it holds the marker whole, or differs from
 * it. Only bytes that could still become the marker wait for more, at most `waitMs`.
 */
export async function skipStreamOpened(stream: Duplex, options: { waitMs: number }): Promise<void> {
  let seen = Buffer.alloc(0);
  for (;;) {
    const chunk = await nextChunk(stream, seen.length === 0 ? undefined : options.waitMs);
    if (chunk === undefined) break;
    seen = Buffer.concat([seen, chunk]);
    const compared = Math.min(seen.length, STREAM_OPENED.length);
    if (!seen.subarray(0, compared).equals(STREAM_OPENED.subarray(0, compared))) break;
    if (seen.length >= STREAM_OPENED.length) {
      seen = seen.subarray(STREAM_OPENED.length);
      break;
    }
  }
  if (seen.length > 0) stream.unshift(seen);
}

/** The next chunk of the paused `stream`, which is paused again; undefined at its end, on an error or after `waitMs`. */
function nextChunk(stream: Duplex, waitMs: number | undefined): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const done = (chunk: Buffer | undefined) => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("close", onEnd);
      stream.off("error", onEnd);
      stream.pause();
      resolve(chunk);
    };
    const onData = (chunk: Buffer) => done(chunk);
    const onEnd = () => done(undefined);
    const timer = waitMs === undefined ? undefined : setTimeout(onEnd, waitMs);
    if (stream.readableEnded || stream.destroyed) return done(undefined);
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("close", onEnd);
    stream.once("error", onEnd);
    // A paused stream stays paused when a listener comes: it flows until the first chunk.
    stream.resume();
  });
}

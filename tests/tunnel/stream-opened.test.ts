import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { STREAM_OPENED } from "../../lib/protocol.ts";
import { skipStreamOpened } from "../../lib/tunnel/stream-opened.ts";

/** A paused stream fed `chunks`, one per turn, then ended unless `end` is false. */
function streamOf(chunks: (string | Buffer)[], end = true): PassThrough {
  const stream = new PassThrough();
  stream.pause();
  (async () => {
    for (const chunk of chunks) {
      await new Promise((resolve) => setImmediate(resolve));
      stream.write(chunk);
    }
    if (end) stream.end();
  })();
  return stream;
}

/** Everything left on `stream` once it ends. */
async function rest(stream: PassThrough): Promise<string> {
  let text = "";
  for await (const chunk of stream) text += (chunk as Buffer).toString("latin1");
  return text;
}

test("the marker is taken off the front, whole or split across chunks, and what follows is left", async () => {
  for (const chunks of [
    [Buffer.concat([STREAM_OPENED, Buffer.from("hello")])],
    [STREAM_OPENED.subarray(0, 3), STREAM_OPENED.subarray(3), "hello"],
  ]) {
    const stream = streamOf(chunks);
    await skipStreamOpened(stream, { waitMs: 1_000 });
    assert.equal(await rest(stream), "hello");
  }
});

test("a stream that does not begin with the marker is left whole, a copy of it later included", async () => {
  const stream = streamOf(["EHLO ", STREAM_OPENED]);
  await skipStreamOpened(stream, { waitMs: 1_000 });
  assert.equal(await rest(stream), `EHLO ${STREAM_OPENED.toString("latin1")}`);
});

test("bytes that could begin the marker wait for more only so long, and are then left", async () => {
  const stream = streamOf([STREAM_OPENED.subarray(0, 2)], false);
  const started = performance.now();
  await skipStreamOpened(stream, { waitMs: 50 });
  assert.ok(performance.now() - started < 500);
  stream.end();
  assert.equal(await rest(stream), STREAM_OPENED.subarray(0, 2).toString("latin1"));
});

test("a stream that ends with the marker, or at once, ends empty", async () => {
  for (const chunks of [[STREAM_OPENED], []]) {
    const stream = streamOf(chunks);
    await skipStreamOpened(stream, { waitMs: 1_000 });
    assert.equal(await rest(stream), "");
  }
});

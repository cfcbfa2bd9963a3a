import assert from "node:assert/strict";
import { test } from "node:test";
import { HANDSHAKE_CAP_FACTOR, handshakeDeadline } from "../../lib/transport/handshake-deadline.ts";

/** Runs a deadline of `idleMs` over a peer whose packets `received` counts; resolves with why it gave up, and when. */
function giveUp(idleMs: number, received: () => number): Promise<{ why: string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve) => {
    handshakeDeadline({ idleMs, received, onTimeout: (why) => resolve({ why, ms: performance.now() - started }) });
  });
}

test("a handshake that hears nothing gives up after the timeout: UDP blocked, a peer gone", async () => {
  const { why, ms } = await giveUp(50, () => 0);
  assert.match(why, /^timed out after \d+ ms: no packet from the peer for 50 ms$/);
  assert.ok(ms >= 49 && ms < 150, `${ms} ms`);
});

test("a handshake whose peer keeps answering goes on past the timeout, up to a cap", async () => {
  let packets = 0;
  const ticker = setInterval(() => packets++, 10);
  try {
    const { why, ms } = await giveUp(50, () => packets);
    assert.match(why, new RegExp(`\\(${HANDSHAKE_CAP_FACTOR} times 50 ms\\)$`));
    assert.ok(ms >= 50 * HANDSHAKE_CAP_FACTOR - 2 && ms < 50 * HANDSHAKE_CAP_FACTOR + 100, `${ms} ms`);
  } finally {
    clearInterval(ticker);
  }
});

test("a peer that falls silent mid-handshake is given up within two timeouts", async () => {
  let packets = 0;
  const ticker = setInterval(() => packets++, 10);
  setTimeout(() => clearInterval(ticker), 70);
  const { why, ms } = await giveUp(50, () => packets);
  assert.match(why, /no packet from the peer for 50 ms/);
  assert.ok(ms >= 99 && ms < 200, `${ms} ms`);
});

test("a cancelled deadline never fires", async () => {
  let fired = false;
  handshakeDeadline({ idleMs: 20, received: () => 0, onTimeout: () => (fired = true) }).cancel();
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.equal(fired, false);
});

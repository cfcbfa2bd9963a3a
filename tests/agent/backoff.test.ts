import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, DUPLICATE_BACKOFF_MAX_MS, RedialBackoff } from "../../lib/agent/backoff.ts";

test("doubles from the minimum up to the cap, within the upper half of each step", () => {
  const low = new Backoff({ minMs: 100, maxMs: 1000, random: () => 0 });
  assert.deepEqual(
    Array.from({ length: 6 }, () => low.next()),
    [50, 100, 200, 400, 500, 500],
  );
  const high = new Backoff({ minMs: 100, maxMs: 1000, random: () => 0.999999 });
  assert.deepEqual(
    Array.from({ length: 6 }, () => high.next()),
    [100, 200, 400, 800, 1000, 1000],
  );
});

test("reset starts over and jitter spreads agents apart", () => {
  const backoff = new Backoff({ minMs: 200, maxMs: 30_000 });
  for (let i = 0; i < 50; i++) backoff.next();
  backoff.reset();
  const first = backoff.next();
  assert.ok(first >= 100 && first <= 200, String(first));
  const spread = new Set(Array.from({ length: 20 }, () => new Backoff({ minMs: 1000, maxMs: 30_000 }).next()));
  assert.ok(spread.size > 10);
});

test("redials after duplicates back off to a few seconds, not to --reconnect-max, and a duplicate starts failures over", () => {
  const redial = new RedialBackoff({ minMs: 250, maxMs: 30_000, random: () => 0.999999 });
  // A replica missing for a minute behind a balancer: one duplicate after another.
  const duplicates = Array.from({ length: 20 }, () => redial.duplicate());
  assert.ok(Math.max(...duplicates) <= DUPLICATE_BACKOFF_MAX_MS, `longest ${Math.max(...duplicates)} ms`);
  // Failures alone climb to --reconnect-max; a duplicate between them proves the path works.
  const failures = Array.from({ length: 10 }, () => redial.failed());
  assert.equal(failures.at(-1), 30_000);
  redial.duplicate();
  assert.equal(redial.failed(), 250);
  // A server of its own reached: duplicates start over too.
  redial.connected();
  assert.equal(redial.duplicate(), 250);
});

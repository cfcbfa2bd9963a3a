import assert from "node:assert/strict";
import { test } from "node:test";
import { quiche } from "../../lib/transport/quiche/binding.ts";
import { RESET_DELAY_MIN_MS, StreamAborts, type WatchedReader } from "../../lib/transport/quiche/stream-aborts.ts";

function setup(rttMs = 0) {
  const shutdowns: Array<[number, number]> = [];
  let resets = 0;
  const aborts = new StreamAborts(
    {
      streamShutdown: (id: number, direction: number) => {
        if (id === 99) throw new Error("Done");
        shutdowns.push([id, direction]);
      },
    },
    { rttMs: () => rttMs, onReset: () => resets++ },
  );
  return { aborts, shutdowns, resets: () => resets };
}

test("a reset waits at least its minimum delay, and a few round trips on a slow path", () => {
  const { aborts, shutdowns, resets } = setup();
  const start = performance.now();
  aborts.resetLater(4);
  aborts.tick(start + RESET_DELAY_MIN_MS - 20);
  assert.deepEqual(shutdowns, []);
  aborts.tick(start + RESET_DELAY_MIN_MS + 20);
  assert.deepEqual(shutdowns, [[4, quiche.Shutdown.Write]]);
  assert.equal(resets(), 1);
  assert.deepEqual(aborts.size, { resets: 0, readers: 0 });

  const slow = setup(150);
  const at = performance.now();
  slow.aborts.resetLater(8);
  slow.aborts.tick(at + 500);
  assert.deepEqual(slow.shutdowns, [], "4 RTTs of 150 ms have not passed");
  slow.aborts.tick(at + 620);
  assert.deepEqual(slow.shutdowns, [[8, quiche.Shutdown.Write]]);
  slow.aborts.clear();
});

test("a stream quiche already reset is dropped without a reset of ours", () => {
  const { aborts, shutdowns, resets } = setup();
  aborts.resetLater(99);
  aborts.tick(performance.now() + 10_000);
  assert.deepEqual(shutdowns, []);
  assert.equal(resets(), 0);
  assert.deepEqual(aborts.size, { resets: 0, readers: 0 });
});

test("stalled readers are checked while they stay paused, and dropped once they read or end", () => {
  const { aborts } = setup();
  const reader = (): WatchedReader & { checks: number; paused: boolean; gone: boolean } => ({
    checks: 0,
    paused: true,
    gone: false,
    get readPaused() {
      return this.paused;
    },
    get destroyed() {
      return this.gone;
    },
    checkStopped() {
      this.checks++;
    },
  });
  const [a, b] = [reader(), reader()];
  aborts.watch(a);
  aborts.watch(b);
  aborts.tick();
  assert.deepEqual([a.checks, b.checks], [1, 1]);
  a.paused = false;
  b.gone = true;
  aborts.tick();
  assert.deepEqual([a.checks, b.checks], [1, 1]);
  assert.deepEqual(aborts.size, { resets: 0, readers: 0 });
});

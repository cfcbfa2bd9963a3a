import assert from "node:assert/strict";
import { test } from "node:test";
import { memoryRelease } from "../../lib/ops/memory.ts";
import { pause, until } from "../wait.ts";

/** A weak reference to a buffer of tunnel size that nothing else holds. */
function garbage(): WeakRef<Buffer> {
  return new WeakRef(Buffer.alloc(512 * 1024, 1));
}

test("a release collects what nothing holds any more, on a later turn, without waiting for the runtime's own schedule", async () => {
  let runs = 0;
  const release = memoryRelease({ quiet: () => true, onRelease: () => runs++ });
  const refs = Array.from({ length: 64 }, garbage);
  release.request();
  assert.equal(runs, 0, "never inside the caller's own work");
  await until(() => runs === 1, "the release to run", { timeoutMs: 5_000, intervalMs: 5 });
  // A conservative stack scan (Bun's) may keep one or two alive; a collection takes the rest.
  const alive = refs.filter((ref) => ref.deref() !== undefined).length;
  assert.ok(alive <= 4, `${alive} of 64 unreferenced buffers survived the release`);
});

test("requests within the interval fold into one release after it, and one more follows once they stop", async () => {
  const runs: number[] = [];
  // When each release began: the interval counts from there, and a full collection in a big heap
  // (Deno's, late in the suite) can take more than the 20 ms of slack.
  const release = memoryRelease({ intervalMs: 100, quiet: () => false, onRelease: (report) => runs.push(performance.now() - report.ms) });
  const started = performance.now();
  release.request();
  await until(() => runs.length === 1, "the first release", { timeoutMs: 5_000, intervalMs: 5 });
  for (let i = 0; i < 50; i++) release.request();
  await until(() => runs.length === 2, "the folded release", { timeoutMs: 5_000, intervalMs: 5 });
  assert.ok(runs[1] - runs[0] >= 80, "the second release waited for the interval");
  await until(() => runs.length === 3, "the release once requests stopped", { timeoutMs: 5_000, intervalMs: 5 });
  assert.ok(runs[2] - started >= 380, "it came four intervals after the last request");
  await pause(600);
  assert.equal(runs.length, 3, "fifty-one requests made three releases");
});

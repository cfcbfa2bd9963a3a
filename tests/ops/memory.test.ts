import assert from "node:assert/strict";
import { test } from "node:test";
import { memoryRelease } from "../../lib/ops/memory.ts";
import { until } from "../wait.ts";

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

test("requests within the interval fold into one release after it", async () => {
  let runs = 0;
  const release = memoryRelease({ intervalMs: 200, quiet: () => false, onRelease: () => runs++ });
  release.request();
  await until(() => runs === 1, "the first release", { timeoutMs: 5_000, intervalMs: 5 });
  const first = performance.now();
  for (let i = 0; i < 50; i++) release.request();
  await until(() => runs === 2, "the folded release", { timeoutMs: 5_000, intervalMs: 5 });
  assert.ok(performance.now() - first >= 150, "the second release waited for the interval");
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(runs, 2, "fifty requests made one release");
});

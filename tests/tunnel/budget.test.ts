import assert from "node:assert/strict";
import { test } from "node:test";
import { BufferBudget, BufferBudgetError, type Stall } from "../../lib/tunnel/budget.ts";

/** A stall holding `bytes`, recording the error it was aborted with. */
function fakeStall(bytes: number): Stall & { bytes: number; aborted?: BufferBudgetError } {
  const stall: Stall & { bytes: number; aborted?: BufferBudgetError } = {
    bytes,
    held: () => stall.bytes,
    abort: (err) => {
      stall.aborted = err;
    },
  };
  return stall;
}

test("stalls within the budget and their share are left alone", () => {
  const budget = new BufferBudget(1000);
  const stalls = [fakeStall(200), fakeStall(250), fakeStall(250)];
  for (const stall of stalls) budget.stall(stall);
  assert.ok(stalls.every((stall) => stall.aborted === undefined));
  for (const stall of stalls) budget.resume(stall);
  assert.equal(budget.aborted, 0);
});

test("one stall over half of the budget is ended, whatever the others hold", () => {
  const budget = new BufferBudget(1000);
  const small = fakeStall(10);
  const big = fakeStall(100);
  budget.stall(small);
  budget.stall(big);
  assert.equal(big.aborted, undefined);
  big.bytes = 501;
  budget.check();
  const error = big.aborted as BufferBudgetError | undefined;
  assert.ok(error instanceof BufferBudgetError);
  assert.match(error.message, /501 bytes .* share .* --max-buffered 1000/);
  assert.equal(small.aborted, undefined);
  budget.resume(small);
});

test("over the budget, the longest stalled are ended first among equals until the rest fit", () => {
  const budget = new BufferBudget(1000);
  const stalls = Array.from({ length: 6 }, () => fakeStall(200));
  for (const stall of stalls) budget.stall(stall);
  // 6 x 200 > 1000: the first one is ended as the sixth arrives, and the rest fit.
  assert.deepEqual(
    stalls.map((stall) => stall.aborted !== undefined),
    [true, false, false, false, false, false],
  );
  assert.match(stalls[0].aborted?.message ?? "", /stalled tunnels hold more than --max-buffered 1000/);
  assert.equal(budget.aborted, 1);
  for (const stall of stalls) budget.resume(stall);
});

test("over the budget, those holding the most are ended first, however recently they stalled", () => {
  const budget = new BufferBudget(1000);
  // A fresh tunnel stalls first, behind a flood whose directions each hold more and stall anew.
  const fresh = fakeStall(64);
  budget.stall(fresh);
  const flood = [fakeStall(190), fakeStall(130), fakeStall(170), fakeStall(150), fakeStall(180), fakeStall(160)];
  for (const stall of flood) budget.stall(stall);
  // 64 + 980 > 1000: the heaviest (190) goes, and 854 fit.
  assert.equal(fresh.aborted, undefined);
  assert.deepEqual(
    flood.map((stall) => stall.aborted !== undefined),
    [true, false, false, false, false, false],
  );
  for (const stall of flood) stall.bytes += 60;
  budget.check();
  // 64 + 190 + 230 + 210 + 240 + 220 > 1000: the 240 goes; the fresh tunnel, first stalled, stays.
  assert.equal(fresh.aborted, undefined);
  assert.deepEqual(
    flood.map((stall) => stall.aborted !== undefined),
    [true, false, false, false, true, false],
  );
  for (const stall of [fresh, ...flood]) budget.resume(stall);
});

test("a stall that moves again is no longer counted", () => {
  const budget = new BufferBudget(1000);
  const first = fakeStall(200);
  budget.stall(first);
  budget.resume(first);
  const second = fakeStall(490);
  budget.stall(second);
  first.bytes = 900;
  budget.check();
  assert.equal(first.aborted, undefined);
  assert.equal(second.aborted, undefined);
  budget.resume(second);
});

test("a budget of 0 watches nothing", () => {
  const budget = new BufferBudget(0);
  const stall = fakeStall(1 << 30);
  budget.stall(stall);
  budget.check();
  assert.equal(stall.aborted, undefined);
});

test("an eighth of the budget held by stalls that were ended, or closed stalled, is reported freed; stalls that drained are not", () => {
  let freed = 0;
  const budget = new BufferBudget(1000, { onFreed: () => freed++ });
  const drained = fakeStall(400);
  budget.stall(drained);
  budget.resume(drained);
  budget.ended(drained);
  assert.equal(freed, 0, "a stall that drained and then closed held nothing any more");
  const small = fakeStall(100);
  budget.stall(small);
  budget.ended(small);
  assert.equal(freed, 0, "100 bytes are less than an eighth of 1000");
  const stalls = Array.from({ length: 6 }, () => fakeStall(200));
  for (const stall of stalls) budget.stall(stall);
  assert.equal(freed, 1, "the budget ended one stall of 200: 300 freed in all");
  budget.ended(stalls[0]);
  assert.equal(freed, 1, "the ended stall's close is not counted twice");
  budget.ended(stalls[1]);
  assert.equal(freed, 2, "a stall of 200 whose tunnel closed while it waited");
  assert.equal(budget.stalled, 4);
  for (const stall of stalls) budget.resume(stall);
  assert.equal(budget.stalled, 0);
});

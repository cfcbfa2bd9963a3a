/**
 * Waiting in tests: on events, not on fixed sleeps. {@link until} polls a real condition with a
 * deadline and fails naming what did not happen; {@link pause} is for the few places where a span of
 * time is itself the point (a stretch in which nothing may happen, the gap between two probes), and
 * says so at its call site.
 *
 * @module
 */

/**
 * Resolves after `ms`. Not a way to wait for something to happen (use {@link until} or an event):
 * only for a period that is the point of the test, or the pace of a poll.
 */
export function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A value that {@link until} takes as "not yet". */
type NotYet = undefined | null | false | 0 | "";

/**
 * Calls `check` (which may be async) every `intervalMs` until it returns something other than
 * undefined, null, false, 0 or "", and resolves with that value. Rejects once `timeoutMs` have
 * passed without it with "timed out after N ms waiting for `what`"; `what` may be a function, to
 * name the last state seen in that message. A `check` that throws rejects at once.
 */
export async function until<T>(
  check: () => T | Promise<T>,
  what: string | (() => string),
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<Exclude<T, NotYet>> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as Exclude<T, NotYet>;
    if (Date.now() >= deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`);
    await pause(options.intervalMs ?? 10);
  }
}

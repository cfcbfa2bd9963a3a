/**
 * Gives back the memory that tunnels ended for not reading leave behind. A flood of clients that
 * stop reading makes a role read and drop hundreds of MB within seconds; the collector runs late
 * for garbage made that fast (measured on Bun: a heap of 120-150 MB of which 45-60 were live), and
 * what it frees stays resident in the allocators (quiche's buffers in glibc's, Bun's own). So the
 * budget (lib/tunnel/budget.ts) asks for a release each time the stalls it ended, or that went while
 * stalled, have held an eighth of it, and a release is a full collection, then glibc's `malloc_trim`
 * where the runtime can call it, and, once nothing is stalled any more, Bun's `shrink` (it also
 * drops compiled code, too dear while a flood lasts).
 *
 * Runtime-specific code stays in this module: `Bun.gc`, `Bun.shrink` and `bun:ffi` on Bun, V8's
 * `gc` (exposed at run time, as `--expose-gc` would) on Node and Deno, and `Deno.dlopen`.
 *
 * @module
 */
import { createRequire } from "node:module";
import v8 from "node:v8";
import vm from "node:vm";

interface BunRuntime {
  gc(force: boolean): void;
  shrink?(): void;
}

const bun = (globalThis as { Bun?: BunRuntime }).Bun;

/** A full collection, where the runtime offers one. */
function collector(): (() => void) | undefined {
  if (bun !== undefined) return () => bun.gc(true);
  try {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as unknown;
    return typeof gc === "function" ? () => (gc as () => void)() : undefined;
  } catch {
    return undefined;
  }
}

interface DenoRuntime {
  permissions: { querySync(descriptor: { name: "ffi" }): { state: string } };
  dlopen(
    path: string,
    symbols: Record<string, { parameters: string[]; result: string }>,
  ): {
    symbols: Record<string, (...args: unknown[]) => unknown>;
  };
}

/**
 * glibc's `malloc_trim(0)` through the runtime's FFI: Bun's, or Deno's when FFI is already allowed
 * (never a permission prompt). Undefined on Node (no FFI) and off Linux or glibc.
 */
function trimmer(): (() => void) | undefined {
  if (process.platform !== "linux") return undefined;
  try {
    if (bun !== undefined) {
      const ffi = createRequire(import.meta.url)("bun:ffi");
      const libc = ffi.dlopen("libc.so.6", { malloc_trim: { args: [ffi.FFIType.u64], returns: ffi.FFIType.i32 } });
      return () => libc.symbols.malloc_trim(0);
    }
    const deno = (globalThis as { Deno?: DenoRuntime }).Deno;
    if (deno === undefined || deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
    const libc = deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
    return () => libc.symbols.malloc_trim(0);
  } catch {
    return undefined;
  }
}

/** A process's memory release; see the module documentation. */
export interface MemoryRelease {
  /**
   * Asks for a release on a later turn: at once when none ran in the last interval, otherwise
   * once it is over; requests meanwhile fold into that one.
   */
  request(): void;
}

/** What one release did, for a log line. */
export interface ReleaseReport {
  rssBeforeBytes: number;
  rssAfterBytes: number;
  ms: number;
}

/** Options for {@link memoryRelease}. */
export interface MemoryReleaseOptions {
  /** At most one release per this many ms (default 250: a flood's collection takes 10-25 ms). */
  intervalMs?: number;
  /** Whether nothing is stalled now, so that compiled code may go too. */
  quiet: () => boolean;
  /** Hears each release. */
  onRelease?: (report: ReleaseReport) => void;
}

/**
 * A release that runs at most once per interval, and once more when requests have stopped for
 * four intervals: what the last tunnels of a flood held is often still referenced while they close
 * (node:quic frees a stream's buffers only once its object is collected). See
 * {@link MemoryReleaseOptions}.
 */
export function memoryRelease(options: MemoryReleaseOptions): MemoryRelease {
  const intervalMs = options.intervalMs ?? 250;
  // Found on the first request, not at start: a role that never meets a flood never loads FFI
  // or sets V8 flags.
  let steps: { collect: (() => void) | undefined; trim: (() => void) | undefined } | undefined;
  let lastRun = Number.NEGATIVE_INFINITY;
  let soon: ReturnType<typeof setTimeout> | undefined;
  let settled: ReturnType<typeof setTimeout> | undefined;
  const run = () => {
    lastRun = performance.now();
    const rssBeforeBytes = process.memoryUsage.rss();
    steps?.collect?.();
    steps?.trim?.();
    if (options.quiet()) bun?.shrink?.();
    options.onRelease?.({ rssBeforeBytes, rssAfterBytes: process.memoryUsage.rss(), ms: performance.now() - lastRun });
  };
  return {
    request() {
      steps ??= { collect: collector(), trim: trimmer() };
      if (steps.collect === undefined) return;
      clearTimeout(settled);
      settled = setTimeout(run, 4 * intervalMs);
      settled.unref?.();
      if (soon !== undefined) return;
      soon = setTimeout(
        () => {
          soon = undefined;
          run();
        },
        Math.max(0, lastRun + intervalMs - performance.now()),
      );
      soon.unref?.();
    },
  };
}

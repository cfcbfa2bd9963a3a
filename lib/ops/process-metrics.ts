/**
 * The process's own series, named as the Prometheus client libraries name them (prom-client's
 * default metrics), so that dashboards and alerts written for those work unchanged. Hand-written
 * rather than prom-client: importing prom-client and its default metrics costs a Bun process about
 * 16 MB of resident memory (measured: 28 MB idle without, 45 MB with), a third of what a role needs.
 *
 * @module
 */
import { readdirSync, readFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { Counter, Gauge, type Registry } from "./metrics.ts";

/** A number from /proc, or undefined where there is none (not Linux, not readable). */
function fromProc(path: string, pattern: RegExp, scale = 1): number | undefined {
  try {
    const match = pattern.exec(readFileSync(path, "utf8"));
    return match ? Number(match[1]) * scale : undefined;
  } catch {
    return undefined;
  }
}

function openFds(): number | undefined {
  try {
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

/** Registers CPU, memory, descriptors, start time and event-loop delay series for this process. */
export function registerProcessMetrics(registry: Registry): void {
  const started = Date.now() / 1000 - process.uptime();
  const cpu = (part: "user" | "system" | "total") => () => {
    const usage = process.cpuUsage();
    const micros = part === "total" ? usage.user + usage.system : usage[part];
    return [[{}, micros / 1e6] as [Record<string, string>, number]];
  };
  const value = (read: () => number | undefined) => () => {
    const current = read();
    return current === undefined ? [] : [[{}, current] as [Record<string, string>, number]];
  };
  new Counter(registry, "process_cpu_user_seconds_total", "Total user CPU time spent in seconds.", cpu("user"));
  new Counter(registry, "process_cpu_system_seconds_total", "Total system CPU time spent in seconds.", cpu("system"));
  new Counter(registry, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", cpu("total"));
  new Gauge(
    registry,
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
    value(() => started),
  );
  new Gauge(
    registry,
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
    value(() => process.memoryUsage.rss()),
  );
  // prom-client's names: what the collector holds live, beside what the process keeps resident.
  new Gauge(
    registry,
    "nodejs_heap_size_used_bytes",
    "JavaScript heap in use, in bytes.",
    value(() => process.memoryUsage().heapUsed),
  );
  new Gauge(
    registry,
    "nodejs_external_memory_bytes",
    "Memory of buffers and other objects outside the JavaScript heap, in bytes.",
    value(() => process.memoryUsage().external),
  );
  new Gauge(
    registry,
    "process_virtual_memory_bytes",
    "Virtual memory size in bytes.",
    value(() => fromProc("/proc/self/status", /VmSize:\s+(\d+) kB/, 1024)),
  );
  new Gauge(registry, "process_open_fds", "Number of open file descriptors.", value(openFds));
  new Gauge(
    registry,
    "process_max_fds",
    "Maximum number of open file descriptors.",
    value(() => fromProc("/proc/self/limits", /Max open files\s+(\d+)/)),
  );
  // Event-loop delay since the previous scrape, as prom-client reports it.
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const lag = (read: () => number) => () => [[{}, read() / 1e9] as [Record<string, string>, number]];
  new Gauge(
    registry,
    "nodejs_eventloop_lag_mean_seconds",
    "The mean of the recorded event loop delays.",
    lag(() => delay.mean || 0),
  );
  new Gauge(
    registry,
    "nodejs_eventloop_lag_p99_seconds",
    "The 99th percentile of the recorded event loop delays.",
    lag(() => delay.percentile(99)),
  );
  new Gauge(registry, "nodejs_eventloop_lag_max_seconds", "The maximum recorded event loop delay.", () => {
    const max = delay.max;
    delay.reset();
    return [[{}, max / 1e9]];
  });
}

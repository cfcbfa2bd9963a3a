/**
 * Logging on `@logtape/logtape`: one line per event on stderr, klog-style verbosity from `--v`.
 * Message templates carry context as properties (`{peer}`, `{target}`); properties the template
 * does not use are appended as `key=value`.
 *
 * @module
 */
import { configureSync, getLogger, type Logger, type LogLevel, type LogRecord } from "@logtape/logtape";

export type { Logger };

/**
 * Maps klog verbosity to a lowest level: 0-1 lifecycle (`info`), 2-3 one line per tunnel
 * (`debug`), 4 and up per-stream detail (`trace`). Warnings and errors always show.
 */
export function levelForVerbosity(v: number): LogLevel {
  if (v >= 4) return "trace";
  if (v >= 2) return "debug";
  return "info";
}

const LEVEL_NAMES: Record<LogLevel, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO",
  warning: "WARN",
  error: "ERROR",
  fatal: "FATAL",
};

function quote(value: unknown): string {
  const text = value instanceof Error ? value.message : typeof value === "string" ? value : JSON.stringify(value);
  return /^[^\s"=]*$/.test(text ?? "") ? String(text) : JSON.stringify(text);
}

/** A value inside a message reads as itself: text as text, an error as its message. */
function plain(value: unknown): string {
  if (value instanceof Error) return value.message;
  return typeof value === "string" ? value : JSON.stringify(value);
}

function renderMessage(record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : plain(part);
  }
  return message;
}

/** Renders a record as `time LEVEL category: message key=value ...`. */
export function formatLine(record: LogRecord): string {
  const message = renderMessage(record);
  const used = new Set<string>();
  for (const match of String(record.rawMessage).matchAll(/\{(\w+)\}/g)) used.add(match[1]);
  const extra = Object.entries(record.properties)
    .filter(([key, value]) => !used.has(key) && value !== undefined)
    .map(([key, value]) => ` ${key}=${quote(value)}`)
    .join("");
  const time = new Date(record.timestamp).toISOString();
  return `${time} ${LEVEL_NAMES[record.level]} ${record.category.slice(1).join(".")}: ${message}${extra}\n`;
}

/**
 * Renders a record as one JSON object with stable keys: `time`, `level`, `logger`, `msg`, then the
 * record's properties (agent, peer, target, stream, up, down, ms, outcome, error ...).
 */
export function formatJson(record: LogRecord): string {
  const fields: Record<string, unknown> = {
    time: new Date(record.timestamp).toISOString(),
    level: record.level,
    logger: record.category.slice(1).join("."),
    msg: renderMessage(record),
  };
  for (const [key, value] of Object.entries(record.properties)) {
    if (value !== undefined && !(key in fields)) fields[key] = value instanceof Error ? value.message : value;
  }
  return `${JSON.stringify(fields)}\n`;
}

/**
 * Configures logging for a role and returns its logger. Call once at start-up. `ignored` are klog
 * flags the command line gave, which have no effect here: they are named once.
 */
export function setupLogging(role: string, options: { verbosity: number; format?: string; ignored?: readonly string[] }): Logger {
  const format = options.format === "json" ? formatJson : formatLine;
  configureSync({
    reset: true,
    sinks: { stderr: (record) => process.stderr.write(format(record)) },
    loggers: [
      { category: ["quic-tunnel"], lowestLevel: levelForVerbosity(options.verbosity), sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
  const log = getLogger(["quic-tunnel", role]);
  if (options.ignored?.length)
    log.info("accepted for the reference's command lines, with no effect: {flags}", { flags: options.ignored.join(" ") });
  return log;
}

/**
 * Lets at most `limit` events a window through to the log and counts the rest, so that a flood of
 * refusals (a stranger's handshakes) costs a line now and then instead of a line each.
 */
export class LogThrottle {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  #windowStart = Number.NEGATIVE_INFINITY;
  #passed = 0;
  #suppressed = 0;

  constructor(options: { limit: number; windowMs: number; now?: () => number }) {
    this.#limit = options.limit;
    this.#windowMs = options.windowMs;
    this.#now = options.now ?? Date.now;
  }

  /**
   * True when this event may be logged. When a new window starts, `onSuppressed` first hears how
   * many events the last one held back.
   */
  allow(onSuppressed: (count: number) => void): boolean {
    const now = this.#now();
    if (now - this.#windowStart >= this.#windowMs) {
      if (this.#suppressed > 0) onSuppressed(this.#suppressed);
      this.#windowStart = now;
      this.#passed = 0;
      this.#suppressed = 0;
    }
    if (this.#passed < this.#limit) {
      this.#passed++;
      return true;
    }
    this.#suppressed++;
    return false;
  }
}

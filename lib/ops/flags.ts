/**
 * Command-line flags for the role scripts on `node:util` parseArgs: typed values, defaults, `--help`
 * text generated from the same table, and the reference's whole command line accepted, so that its
 * manifests keep working: Go `flag` spellings (`-cert-file x`, `--v=2`, `-idle-timeout -5s`), `-h`,
 * and klog's flags (`-v` is ours; the others are accepted and reported as ignored).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type HostPort, parseHostPort } from "../hostport.ts";

/** Kinds of flag values; durations become milliseconds, sizes bytes; a list may be given many times. */
export type FlagKind = "string" | "int" | "duration" | "size" | "hostport" | "hostports" | "bool" | "list";

/** One flag: its kind, help text, and default (as it would be typed). */
export interface FlagSpec {
  kind: FlagKind;
  help: string;
  default?: string;
  required?: boolean;
  /** Placeholder shown in help, e.g. `host:port`. */
  value?: string;
  /** For strings: the only values accepted. */
  choices?: readonly string[];
  /** For numbers, durations and sizes: 0 (and below) makes no sense. */
  positive?: boolean;
}

type ValueOf<K extends FlagKind> = K extends "string"
  ? string
  : K extends "hostport"
    ? HostPort
    : K extends "hostports"
      ? HostPort[]
      : K extends "bool"
        ? boolean
        : K extends "list"
          ? string[]
          : number;

/** The parsed values of a flag table. */
export type FlagValues<T extends Record<string, FlagSpec>> = { [K in keyof T]: ValueOf<T[K]["kind"]> };

/**
 * klog's flags, which the reference's binaries take and its manifests pass (`-v` is among our own
 * flags). They are accepted in every Go spelling and have no effect here.
 */
const KLOG_FLAGS: Readonly<Record<string, "bool" | "value">> = {
  add_dir_header: "bool",
  alsologtostderr: "bool",
  log_backtrace_at: "value",
  log_dir: "value",
  log_file: "value",
  log_file_max_size: "value",
  logtostderr: "bool",
  one_output: "bool",
  skip_headers: "bool",
  skip_log_headers: "bool",
  stderrthreshold: "value",
  vmodule: "value",
};

/** A command line's values, and the klog flags it gave that have no effect here. */
export type ParsedFlags<T extends Record<string, FlagSpec>> = FlagValues<T> & {
  readonly ignored: readonly string[];
  /** The flags set on the command line (the others have their defaults). */
  readonly given: ReadonlySet<string>;
};

/** A command line that cannot be used; the message names the flag. */
export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

/** Describes a role for `--help`. */
export interface CommandInfo {
  name: string;
  summary: string;
  version: string;
}

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const UNITS_BYTES: Record<string, number> = { "": 1, k: 1024, kib: 1024, m: 1 << 20, mib: 1 << 20, g: 1 << 30, gib: 1 << 30 };

/** Parses a Go-style duration (`500ms`, `10s`, `1m30s`) to milliseconds; a bare number is seconds. */
export function parseDuration(text: string): number | undefined {
  if (/^[0-9]+(\.[0-9]+)?$/.test(text)) return Number(text) * 1000;
  const re = /([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    total += Number(m[1]) * UNITS_MS[m[2]];
    matched = re.lastIndex;
  }
  return matched === text.length && text.length > 0 ? Math.round(total) : undefined;
}

/** Parses a byte size such as `1MiB`, `512k` or `65536`. */
export function parseSize(text: string): number | undefined {
  const m = /^([0-9]+)\s*([a-z]*)$/i.exec(text);
  const unit = m ? UNITS_BYTES[m[2].toLowerCase()] : undefined;
  return m && unit !== undefined ? Number(m[1]) * unit : undefined;
}

/** Formats milliseconds as the shortest Go-style duration that parses back to them (`2s`, `250ms`, `1m30s`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0";
  if (ms % 1000 !== 0) return `${ms}ms`;
  const seconds = ms / 1000;
  if (seconds % 60 !== 0 || seconds < 60) return seconds < 60 ? `${seconds}s` : `${Math.floor(seconds / 60)}m${seconds % 60}s`;
  return `${seconds / 60}m`;
}

/** Formats a byte count with the largest binary unit that divides it (`1MiB`, `16KiB`, `1232`). */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [
    ["GiB", 1 << 30],
    ["MiB", 1 << 20],
    ["KiB", 1024],
  ] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

function convert(name: string, spec: FlagSpec, text: string): unknown {
  const fail = (what: string): never => {
    throw new FlagError(`--${name}: ${what}, got ${JSON.stringify(text)}`);
  };
  if (/^-\d/.test(text) && ["int", "duration", "size"].includes(spec.kind)) {
    throw new FlagError(`--${name} must ${spec.positive ? "be positive" : "not be negative"}, got ${text}`);
  }
  const value = convertText(spec, text, fail);
  if (spec.positive && value === 0) throw new FlagError(`--${name} must be positive, got ${text}`);
  return value;
}

function convertText(spec: FlagSpec, text: string, fail: (what: string) => never): unknown {
  switch (spec.kind) {
    case "string":
      return !spec.choices || spec.choices.includes(text) ? text : fail(`expected one of ${spec.choices.join(", ")}`);
    case "list":
      return text;
    case "bool":
      if (text === "true" || text === "") return true;
      if (text === "false") return false;
      return fail("expected true or false");
    case "int":
      return /^[0-9]+$/.test(text) ? Number(text) : fail("expected a non-negative integer");
    case "duration":
      return parseDuration(text) ?? fail("expected a duration such as 500ms, 10s or 2m");
    case "size":
      return parseSize(text) ?? fail("expected a size such as 1232, 64KiB or 8MiB");
    case "hostport":
      return parseHostPort(text) ?? fail("expected host:port or [ipv6]:port");
    case "hostports": {
      const addresses = text.split(",").map((part) => parseHostPort(part.trim()));
      return addresses.every((address) => address !== undefined) ? addresses : fail("expected host:port[,host:port...]");
    }
  }
}

/**
 * Rewrites a Go `flag` command line into the `--name=value` / `--name` form parseArgs reads: one or
 * two dashes, the value after `=` or in the next argument (even one starting with `-`, as Go takes
 * it), `-h` for help. Boolean flags given `=false` are returned apart, as parseArgs has no such form.
 */
function normalize(argv: string[], kinds: Record<string, "bool" | "value">): { args: string[]; negated: Set<string> } {
  const args: string[] = [];
  const negated = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const flag = /^--?([A-Za-z][\w-]*)(?:=(.*))?$/s.exec(argv[i]);
    if (flag === null) {
      args.push(argv[i]);
      continue;
    }
    const name = flag[1] === "h" ? "help" : flag[1];
    let value = flag[2];
    if (kinds[name] === "bool") {
      if (value === "false") negated.add(name);
      else if (value === undefined || value === "true") args.push(`--${name}`);
      else throw new FlagError(`--${name}: expected true or false, got ${JSON.stringify(value)}`);
      continue;
    }
    if (kinds[name] === "value" && value === undefined) {
      if (i + 1 >= argv.length) throw new FlagError(`--${name} needs a value`);
      value = argv[++i];
    }
    args.push(value === undefined ? `--${name}` : `--${name}=${value}`);
  }
  return { args, negated };
}

/** The `--help` text of a command. */
export function helpText<T extends Record<string, FlagSpec>>(info: CommandInfo, flags: T): string {
  const rows = Object.entries(flags).map(([name, spec]) => {
    const left = `  --${name}${spec.kind === "bool" ? "" : ` ${spec.value ?? spec.kind}`}`;
    const extra = spec.required ? " (required)" : spec.default !== undefined && spec.default !== "" ? ` (default ${spec.default})` : "";
    return [left, `${spec.help}${extra}`];
  });
  rows.push(["  -h, --help", "Print this help and exit."], ["  --version", "Print the version and exit."]);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const lines = rows.map(([left, right]) => `${left.padEnd(width)}${right}`);
  const klog = Object.keys(KLOG_FLAGS)
    .map((name) => `-${name}`)
    .join(", ");
  return (
    `Usage: ${info.name} [flags]\n\n${info.summary}\n\nFlags (also accepted as -flag, -flag=value or --flag=value):\n${lines.join("\n")}\n\n` +
    `The reference's klog flags are accepted too, and have no effect (logs go to stderr; --v sets the detail): ${klog}.\n`
  );
}

/**
 * Parses `argv` against the flag table. Returns the typed values (and the klog flags given, which
 * have no effect), or `"help"`/`"version"` when one of those was asked for. Throws
 * {@link FlagError} for unknown flags, bad values and missing ones.
 */
export function parseFlags<T extends Record<string, FlagSpec>>(argv: string[], flags: T): ParsedFlags<T> | "help" | "version" {
  const kinds: Record<string, "bool" | "value"> = { help: "bool", version: "bool", ...KLOG_FLAGS };
  for (const [name, spec] of Object.entries(flags)) kinds[name] = spec.kind === "bool" ? "bool" : "value";
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const [name, kind] of Object.entries(kinds)) {
    options[name] = { type: kind === "bool" ? "boolean" : "string", multiple: flags[name]?.kind === "list" || name in KLOG_FLAGS };
  }
  const { args, negated } = normalize(argv, kinds);
  let parsed: Record<string, string | boolean | Array<string | boolean> | undefined>;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new FlagError((err as Error).message.replace(/\. To specify.*$/s, ""));
  }
  if (parsed.help) return "help";
  if (parsed.version) return "version";
  const values: Record<string, unknown> = {
    ignored: Object.keys(KLOG_FLAGS)
      .filter((name) => parsed[name] !== undefined || negated.has(name))
      .map((name) => `-${name}`),
  };
  values.given = new Set(Object.keys(flags).filter((name) => parsed[name] !== undefined || negated.has(name)));
  for (const [name, spec] of Object.entries(flags)) {
    const given = parsed[name];
    if (spec.kind === "list") {
      values[name] = Array.isArray(given) ? given.map(String) : spec.default ? [spec.default] : [];
      if (spec.required && (values[name] as string[]).length === 0) throw new FlagError(`--${name} is required`);
      continue;
    }
    if (spec.kind === "bool") {
      values[name] = negated.has(name) ? false : given === true ? true : convert(name, spec, spec.default ?? "false");
      continue;
    }
    const text = typeof given === "string" ? given : spec.default;
    if (text === undefined || text === "") {
      if (spec.required) throw new FlagError(`--${name} is required`);
      values[name] = spec.kind === "string" ? "" : undefined;
      continue;
    }
    values[name] = convert(name, spec, text);
  }
  return values as ParsedFlags<T>;
}

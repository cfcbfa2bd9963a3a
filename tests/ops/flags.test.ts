import assert from "node:assert/strict";
import { test } from "node:test";
import { FlagError, helpText, parseDuration, parseFlags, parseSize } from "../../lib/ops/flags.ts";

const FLAGS = {
  "listen-tcp": { kind: "hostport", default: "0.0.0.0:8443", help: "TCP address." },
  "cert-file": { kind: "string", required: true, help: "Certificate." },
  timeout: { kind: "duration", default: "10s", help: "A duration." },
  window: { kind: "size", default: "1MiB", help: "A size." },
  v: { kind: "int", default: "0", help: "Verbosity." },
  retry: { kind: "bool", default: "true", help: "A switch." },
} as const;

test("parses typed values and applies defaults", () => {
  const values = parseFlags(["--cert-file", "a.crt"], FLAGS);
  assert.notEqual(values, "help");
  assert.deepEqual(values, {
    "listen-tcp": { host: "0.0.0.0", port: 8443 },
    "cert-file": "a.crt",
    timeout: 10_000,
    window: 1 << 20,
    v: 0,
    retry: true,
    ignored: [],
    given: new Set(["cert-file"]),
  });
});

test("the flags set on the command line are told from those at their defaults, in every spelling", () => {
  const values = parseFlags(["-cert-file=b.crt", "--timeout", "10s", "-retry=false"], FLAGS);
  assert.ok(typeof values === "object");
  assert.deepEqual([...values.given].sort(), ["cert-file", "retry", "timeout"]);
});

test("accepts the Go flag spellings of the reference", () => {
  const values = parseFlags(["-cert-file=b.crt", "-listen-tcp", "[::]:1", "--v=4", "-timeout", "1m30s", "--retry=false"], FLAGS);
  assert.ok(typeof values === "object");
  assert.equal(values["cert-file"], "b.crt");
  assert.deepEqual(values["listen-tcp"], { host: "::", port: 1 });
  assert.equal(values.v, 4);
  assert.equal(values.timeout, 90_000);
  assert.equal(values.retry, false);
});

test("errors name the flag", () => {
  assert.throws(
    () => parseFlags([], FLAGS),
    (err: Error) => err instanceof FlagError && /--cert-file is required/.test(err.message),
  );
  assert.throws(() => parseFlags(["--cert-file", "x", "--timeout", "soon"], FLAGS), /--timeout: expected a duration/);
  assert.throws(() => parseFlags(["--cert-file", "x", "--listen-tcp", "nope"], FLAGS), /--listen-tcp: expected host:port/);
  assert.throws(() => parseFlags(["--cert-file", "x", "--bogus"], FLAGS), FlagError);
  assert.throws(() => parseFlags(["--cert-file", "x", "--v", "-1"], FLAGS), FlagError);
});

test("help and version win over missing flags", () => {
  assert.equal(parseFlags(["--help"], FLAGS), "help");
  assert.equal(parseFlags(["-help"], FLAGS), "help");
  assert.equal(parseFlags(["--version"], FLAGS), "version");
});

test("help text lists every flag with its default", () => {
  const text = helpText({ name: "x", summary: "Does x.", version: "1" }, FLAGS);
  for (const name of Object.keys(FLAGS)) assert.match(text, new RegExp(`--${name}\\b`));
  assert.match(text, /\(default 0\.0\.0\.0:8443\)/);
  assert.match(text, /Certificate\. \(required\)/);
});

test("durations and sizes", () => {
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("2"), 2000);
  assert.equal(parseDuration("1h"), 3_600_000);
  assert.equal(parseDuration("10x"), undefined);
  assert.equal(parseDuration(""), undefined);
  assert.equal(parseSize("64KiB"), 65536);
  assert.equal(parseSize("8m"), 8 << 20);
  assert.equal(parseSize("1232"), 1232);
  assert.equal(parseSize("lots"), undefined);
});

test("klog's flags are accepted in every Go spelling and reported as ignored; -v is ours", () => {
  const values = parseFlags(
    [
      "--cert-file",
      "x",
      "-v=3",
      "-logtostderr=true",
      "-alsologtostderr",
      "--vmodule",
      "foo=2",
      "-stderrthreshold=INFO",
      "-log_dir",
      "/tmp",
      "--log_file=/tmp/x.log",
      "-log_file_max_size",
      "10",
      "-skip_headers",
      "-skip_log_headers=false",
      "-add_dir_header",
      "-one_output",
      "-log_backtrace_at=x.go:1",
    ],
    FLAGS,
  );
  assert.ok(typeof values === "object");
  assert.equal(values.v, 3);
  assert.deepEqual([...values.ignored].sort(), [
    "-add_dir_header",
    "-alsologtostderr",
    "-log_backtrace_at",
    "-log_dir",
    "-log_file",
    "-log_file_max_size",
    "-logtostderr",
    "-one_output",
    "-skip_headers",
    "-skip_log_headers",
    "-stderrthreshold",
    "-vmodule",
  ]);
  assert.equal(parseFlags(["-h"], FLAGS), "help");
  assert.equal(parseFlags(["-v", "2", "--cert-file", "x"], FLAGS) !== "help", true);
});

test("values: negative and meaningless zero values are one-line errors naming the flag", () => {
  const specs = { ...FLAGS, "idle-timeout": { kind: "duration", positive: true, default: "5s", help: "." } } as const;
  assert.throws(
    () => parseFlags(["--cert-file", "x", "--idle-timeout", "-5s"], specs),
    /^FlagError: --idle-timeout must be positive, got -5s$/,
  );
  assert.throws(() => parseFlags(["--cert-file", "x", "-idle-timeout=0"], specs), /--idle-timeout must be positive, got 0$/);
  assert.throws(() => parseFlags(["--cert-file", "x", "--timeout", "-1s"], specs), /--timeout must not be negative, got -1s$/);
  assert.deepEqual(
    (parseFlags(["--cert-file", "x", "--timeout", "0"], specs) as { timeout: number }).timeout,
    0,
    "zero where it means off",
  );
  assert.throws(() => parseFlags(["--cert-file", "x", "--timeout"], specs), /--timeout needs a value/);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import type { LogRecord } from "@logtape/logtape";
import { formatJson, formatLine, LogThrottle, levelForVerbosity } from "../../lib/ops/log.ts";

const record: LogRecord = {
  category: ["quic-tunnel", "server"],
  level: "info",
  message: ["agent ", "127.0.0.1:5000", " connected"],
  rawMessage: "agent {peer} connected",
  timestamp: Date.UTC(2026, 10, 26, 1, 2, 3),
  properties: { peer: "127.0.0.1:5000", subject: "CN=agent one", agents: 2, error: new Error("boom") },
};

test("klog verbosity maps to levels", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 9].map(levelForVerbosity), ["info", "info", "debug", "debug", "trace", "trace"]);
});

test("text lines: time, level, logger, message, then unused properties as key=value", () => {
  assert.equal(
    formatLine(record),
    '2026-11-26T01:02:03.000Z INFO server: agent 127.0.0.1:5000 connected subject="CN=agent one" agents=2 error=boom\n',
  );
});

test("JSON lines carry stable keys and every property", () => {
  assert.deepEqual(JSON.parse(formatJson(record)), {
    time: "2026-11-26T01:02:03.000Z",
    level: "info",
    logger: "server",
    msg: "agent 127.0.0.1:5000 connected",
    peer: "127.0.0.1:5000",
    subject: "CN=agent one",
    agents: 2,
    error: "boom",
  });
});

test("the throttle lets a few events a window through and reports how many it held back", () => {
  let now = 0;
  const throttle = new LogThrottle({ limit: 2, windowMs: 1000, now: () => now });
  const held: number[] = [];
  const allowed = Array.from({ length: 5 }, () => throttle.allow((count) => held.push(count)));
  assert.deepEqual(allowed, [true, true, false, false, false]);
  now = 999;
  assert.equal(
    throttle.allow((count) => held.push(count)),
    false,
  );
  now = 1000;
  assert.equal(
    throttle.allow((count) => held.push(count)),
    true,
  );
  assert.deepEqual(held, [4]);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { parseControlLine } from "../lib/control.ts";

test("control lines: an agent's hello with its kind, GOAWAY, and nothing else", () => {
  assert.deepEqual(parseControlLine("AGENT connect"), { type: "hello", kind: "connect" });
  assert.deepEqual(parseControlLine("AGENT passthrough"), { type: "hello", kind: "passthrough" });
  assert.deepEqual(parseControlLine("GOAWAY"), { type: "goaway" });
  for (const other of [undefined, "", "AGENT", "AGENT socks", "CONNECT a:1 HTTP/1.1", "GOAWAY now"]) {
    assert.equal(parseControlLine(other), undefined, String(other));
  }
});

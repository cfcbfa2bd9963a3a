/**
 * Property-based fuzzing of the CONNECT head reader with fast-check: random and mutated heads,
 * cut into random chunks, never crash it, and every outcome is a head or a valid HTTP status.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import fc from "fast-check";
import { HttpError, readRequestHead, statusResponse } from "../../lib/tunnel/connect.ts";

const LIMITS = { maxBytes: 2048, timeoutMs: 200 };
const STATUSES = new Set([400, 408, 431]);

const validHead = fc
  .record({
    method: fc.constantFrom("CONNECT", "GET", "POST", "connect"),
    host: fc.oneof(
      fc.domain(),
      fc.ipV4(),
      fc.ipV6().map((ip) => `[${ip}]`),
    ),
    port: fc.integer({ min: 0, max: 70000 }),
    version: fc.constantFrom("HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 "),
    headers: fc.array(fc.tuple(fc.string({ minLength: 1, maxLength: 20 }), fc.string({ maxLength: 40 })), { maxLength: 5 }),
  })
  .map(({ method, host, port, version, headers }) =>
    Buffer.from(`${method} ${host}:${port} ${version}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`, "latin1"),
  );

const mutated = fc
  .tuple(validHead, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }))
  .map(([head, flips]) => {
    const copy = Buffer.from(head);
    for (const [at, byte] of flips) copy[at % copy.length] = byte;
    return copy;
  });

const input = fc.oneof(
  validHead,
  mutated,
  fc.uint8Array({ maxLength: 3000 }).map((bytes) => Buffer.from(bytes)),
);

/** Feeds `bytes` in chunks cut at `cuts`, then ends; resolves with what the reader decided. */
async function outcome(bytes: Buffer, cuts: number[]): Promise<string> {
  const stream = new PassThrough();
  const reading = readRequestHead(stream, LIMITS);
  let offset = 0;
  for (const cut of [...cuts.map((c) => c % (bytes.length + 1))].sort((a, b) => a - b)) {
    stream.write(bytes.subarray(offset, Math.max(offset, cut)));
    offset = Math.max(offset, cut);
  }
  stream.end(bytes.subarray(offset));
  try {
    const { head } = await reading;
    return `head ${head.method}`;
  } catch (err) {
    if (err instanceof HttpError) {
      assert.ok(STATUSES.has(err.status), `status ${err.status}`);
      assert.match(statusResponse(err.status, err.message), /^HTTP\/1\.1 \d{3} [A-Za-z ]+\r\n[\s\S]*\r\n\r\n/);
      return `status ${err.status}`;
    }
    assert.match((err as Error).message, /before a complete request head/);
    return "closed";
  }
}

test("thousands of random and mutated heads: no crash, every answer a valid status", async () => {
  const seen = new Set<string>();
  await fc.assert(
    fc.asyncProperty(input, fc.array(fc.nat(), { maxLength: 4 }), async (bytes, cuts) => {
      seen.add((await outcome(bytes, cuts)).split(" ")[0]);
    }),
    { numRuns: 3000 },
  );
  assert.ok(seen.has("head") && seen.has("status") && seen.has("closed"), `outcomes seen: ${[...seen]}`);
});

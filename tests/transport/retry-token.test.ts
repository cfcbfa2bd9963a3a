import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { RetryTokens } from "../../lib/transport/quiche/retry-token.ts";

const address = "127.0.0.1|4433";
const odcid = randomBytes(16);
const retryScid = randomBytes(20);

test("a token validates for the address and connection ID it was minted for, and yields the original DCID", () => {
  const tokens = new RetryTokens();
  const token = tokens.mint(address, odcid, retryScid);
  assert.deepEqual(tokens.validate(token, address, retryScid), odcid);
});

test("a token replayed with another connection ID, from another address or port, or altered, is refused", () => {
  const tokens = new RetryTokens();
  const token = tokens.mint(address, odcid, retryScid);
  assert.equal(tokens.validate(token, address, randomBytes(20)), undefined);
  assert.equal(tokens.validate(token, "127.0.0.2|4433", retryScid), undefined);
  assert.equal(tokens.validate(token, "127.0.0.1|4434", retryScid), undefined);
  for (let i = 0; i < token.length; i++) {
    const altered = Buffer.from(token);
    altered[i] ^= 0x01;
    assert.equal(tokens.validate(altered, address, retryScid), undefined, `byte ${i} altered`);
  }
  assert.equal(tokens.validate(token.subarray(0, token.length - 1), address, retryScid), undefined);
  assert.equal(tokens.validate(Buffer.alloc(0), address, retryScid), undefined);
});

test("a token from another server instance (another key) is refused", () => {
  const token = new RetryTokens().mint(address, odcid, retryScid);
  assert.equal(new RetryTokens().validate(token, address, retryScid), undefined);
});

test("a token expires after its lifetime and is refused if it claims to come from the future", () => {
  let now = 1_000_000;
  const tokens = new RetryTokens({ ttlMs: 10_000, now: () => now });
  const token = tokens.mint(address, odcid, retryScid);
  now += 10_000;
  assert.deepEqual(tokens.validate(token, address, retryScid), odcid);
  now += 1;
  assert.equal(tokens.validate(token, address, retryScid), undefined);
  now = 0;
  assert.equal(tokens.validate(token, address, retryScid), undefined);
});

/**
 * Stateless Retry tokens (RFC 9000 section 8.1.2). A token proves that a client received our
 * Retry at its address: it carries the issue time and the client's original destination
 * connection ID, and an HMAC binds both to the client's address and port and to the connection ID
 * the Retry told the client to use. So a token works for exactly one connection, from one address,
 * for a short time: replaying it with other connection IDs (to make the server keep state for each)
 * fails validation.
 *
 * @module
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

const VERSION = 1;
const MAC_BYTES = 32;
/** version (1) + issue time in ms (8) + original DCID length (1). */
const HEADER_BYTES = 10;
const MAX_CID_BYTES = 20;

/** Options for {@link RetryTokens}. */
export interface RetryTokenOptions {
  /** How long a token stays valid (default 10 s). */
  ttlMs?: number;
  /** Clock, replaceable in tests. */
  now?: () => number;
}

/** Mints and validates Retry tokens with a key made at construction. */
export class RetryTokens {
  readonly #key = randomBytes(32);
  readonly #ttlMs: number;
  readonly #now: () => number;

  constructor(options: RetryTokenOptions = {}) {
    this.#ttlMs = options.ttlMs ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * A token for a client at `address` (`host|port`) whose first Initial was sent to `originalDcid`,
   * and that the Retry tells to use `retryScid` as its destination connection ID from now on.
   */
  mint(address: string, originalDcid: Uint8Array, retryScid: Uint8Array): Buffer {
    const body = Buffer.alloc(HEADER_BYTES + originalDcid.length);
    body[0] = VERSION;
    body.writeBigUInt64BE(BigInt(this.#now()), 1);
    body[9] = originalDcid.length;
    body.set(originalDcid, HEADER_BYTES);
    return Buffer.concat([body, this.#mac(body, address, retryScid)]);
  }

  /**
   * Checks a token that arrived from `address` in an Initial sent to `dcid`. Returns the original
   * destination connection ID it carries, or `undefined` when the token is forged, expired, from
   * another address, or minted for another connection ID.
   */
  validate(token: Uint8Array, address: string, dcid: Uint8Array): Buffer | undefined {
    if (token.length < HEADER_BYTES + MAC_BYTES || token[0] !== VERSION) return undefined;
    const buffer = Buffer.from(token.buffer, token.byteOffset, token.byteLength);
    const cidLength = buffer[9];
    const bodyLength = HEADER_BYTES + cidLength;
    if (cidLength > MAX_CID_BYTES || buffer.length !== bodyLength + MAC_BYTES) return undefined;
    const body = buffer.subarray(0, bodyLength);
    if (!timingSafeEqual(buffer.subarray(bodyLength), this.#mac(body, address, dcid))) return undefined;
    const age = this.#now() - Number(body.readBigUInt64BE(1));
    if (age < 0 || age > this.#ttlMs) return undefined;
    return Buffer.from(body.subarray(HEADER_BYTES));
  }

  #mac(body: Uint8Array, address: string, dcid: Uint8Array): Buffer {
    return createHmac("sha256", this.#key).update(body).update(Uint8Array.of(dcid.length)).update(dcid).update(address).digest();
  }
}

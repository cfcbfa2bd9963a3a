/**
 * Hand-made QUIC packets for tests that play a stranger: Initials with chosen connection IDs and
 * tokens, and the parts of a Retry.
 *
 * @module
 */
import { randomBytes } from "node:crypto";

/** A QUIC v1 Initial packet header followed by random payload, padded to 1200 bytes. */
export function initialPacket(options: { version?: number; dcid?: Uint8Array; token?: Uint8Array } = {}): Buffer {
  const dcid = options.dcid ?? randomBytes(8);
  const scid = randomBytes(8);
  const token = options.token ?? Buffer.alloc(0);
  const tokenLength = token.length < 64 ? Buffer.of(token.length) : Buffer.of(0x40 | (token.length >> 8), token.length & 0xff);
  const head = Buffer.concat([
    Buffer.of(0xc0),
    Buffer.alloc(4),
    Buffer.of(dcid.length),
    dcid,
    Buffer.of(scid.length),
    scid,
    tokenLength,
    token,
  ]);
  head.writeUInt32BE(options.version ?? 1, 1);
  const payloadLength = 1200 - head.length - 2;
  return Buffer.concat([head, Buffer.of(0x40 | (payloadLength >> 8), payloadLength & 0xff), randomBytes(payloadLength)]);
}

/** The token and the new source connection ID of a Retry packet. */
export function parseRetry(packet: Buffer): { scid: Buffer; token: Buffer } {
  let at = 5;
  at += 1 + packet[at];
  const scidLength = packet[at];
  const scid = packet.subarray(at + 1, at + 1 + scidLength);
  return { scid, token: packet.subarray(at + 1 + scidLength, packet.length - 16) };
}

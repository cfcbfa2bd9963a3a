/**
 * Reading QUIC packet headers in JavaScript (RFC 9000 section 17), for the two places that look at
 * packets before quiche does: the server's routing of every datagram (a stranger's flood must cost
 * as little as possible per packet) and the client's check that the server confirmed the handshake.
 *
 * @module
 */

/** Long-header packet types of QUIC version 1. */
export const PacketType = { Initial: 0, ZeroRtt: 1, Handshake: 2, Retry: 3 } as const;

/** The fields of a long header the server needs, as views into the datagram. */
export interface LongHeader {
  type: number;
  version: number;
  dcid: Uint8Array;
  scid: Uint8Array;
  /** The token of an Initial (empty when it has none). */
  token: Uint8Array;
}

/** Reads a variable-length integer at `at`; returns it and the offset after it, or undefined past the end. */
function readVarint(data: Uint8Array, at: number): [value: number, next: number] | undefined {
  if (at >= data.length) return undefined;
  const length = 1 << (data[at] >> 6);
  if (at + length > data.length) return undefined;
  let value = data[at] & 0x3f;
  for (let i = 1; i < length; i++) value = value * 256 + data[at + i];
  return [value, at + length];
}

/** Parses the long header at the start of `data`; undefined when it is not one or is cut short. */
export function parseLongHeader(data: Uint8Array): LongHeader | undefined {
  if (data.length < 7 || (data[0] & 0x80) === 0) return undefined;
  const version = ((data[1] << 24) | (data[2] << 16) | (data[3] << 8) | data[4]) >>> 0;
  let at = 5;
  const dcidLength = data[at];
  if (dcidLength > 20 || at + 1 + dcidLength >= data.length) return undefined;
  const dcid = data.subarray(at + 1, at + 1 + dcidLength);
  at += 1 + dcidLength;
  const scidLength = data[at];
  if (scidLength > 20 || at + 1 + scidLength > data.length) return undefined;
  const scid = data.subarray(at + 1, at + 1 + scidLength);
  at += 1 + scidLength;
  const type = (data[0] & 0x30) >> 4;
  let token = data.subarray(0, 0);
  if (version !== 0 && type === PacketType.Initial) {
    const tokenLength = readVarint(data, at);
    if (tokenLength === undefined || tokenLength[1] + tokenLength[0] > data.length) return undefined;
    token = data.subarray(tokenLength[1], tokenLength[1] + tokenLength[0]);
  }
  return { type, version, dcid, scid, token };
}

/** Counts the QUIC packets coalesced in a datagram and says whether the last has a short header. */
export function packetsInDatagram(datagram: Uint8Array): { count: number; lastIsShort: boolean } {
  let offset = 0;
  let count = 0;
  while (offset < datagram.length) {
    count++;
    const rest = datagram.subarray(offset);
    if ((rest[0] & 0x80) === 0) return { count, lastIsShort: true };
    const header = parseLongHeader(rest);
    if (header === undefined || header.version === 0 || header.type === PacketType.Retry) return { count, lastIsShort: false };
    const lengthAt =
      header.type === PacketType.Initial
        ? header.token.byteOffset + header.token.length - rest.byteOffset
        : 7 + header.dcid.length + header.scid.length;
    const length = readVarint(rest, lengthAt);
    if (length === undefined) return { count, lastIsShort: false };
    offset += length[1] + length[0];
  }
  return { count, lastIsShort: false };
}

/**
 * Reading QUIC packet headers in JavaScript, for the two places that look at packets before quiche
 * does: the server's routing of every datagram (a stranger's flood must cost as little as possible
 * per packet), which reads only the version-independent invariants (RFC 8999) until it knows the
 * version is one it speaks, then version 1's fields (RFC 9000 section 17); and the client's check
 * that the server confirmed the handshake.
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

/**
 * The fields every version of QUIC keeps in a long header (RFC 8999 section 5.1): the version and
 * connection IDs of up to 255 bytes. Nothing after them is read: its layout is the version's own.
 */
export interface InvariantHeader {
  version: number;
  dcid: Uint8Array;
  scid: Uint8Array;
}

/** Reads the invariant fields of the long header at the start of `data`; undefined when it is not one or is cut short. */
export function parseInvariantHeader(data: Uint8Array): InvariantHeader | undefined {
  if (data.length < 7 || (data[0] & 0x80) === 0) return undefined;
  const version = ((data[1] << 24) | (data[2] << 16) | (data[3] << 8) | data[4]) >>> 0;
  const dcidEnd = 6 + data[5];
  if (dcidEnd >= data.length) return undefined;
  const scidEnd = dcidEnd + 1 + data[dcidEnd];
  if (scidEnd > data.length) return undefined;
  return { version, dcid: data.subarray(6, dcidEnd), scid: data.subarray(dcidEnd + 1, scidEnd) };
}

/** The smallest datagram a server answers with Version Negotiation (RFC 9000 sections 5.2.2 and 14.1). */
export const MIN_NEGOTIATION_DATAGRAM = 1200;

/**
 * What a server does with a datagram whose first packet has a long header, by the invariants alone:
 * `negotiate` (send Version Negotiation: a version this server does not speak, in a datagram of at
 * least 1,200 bytes), `drop` (a Version Negotiation packet, which is never answered; a smaller
 * datagram of another version, which must not be; not a long header at all), or `speak` (a version
 * it speaks: its own parser reads on).
 */
export function versionAction(datagram: Uint8Array, speaks: (version: number) => boolean): "negotiate" | "drop" | "speak" {
  const header = parseInvariantHeader(datagram);
  if (header === undefined || header.version === 0) return "drop";
  if (speaks(header.version)) return "speak";
  return datagram.length >= MIN_NEGOTIATION_DATAGRAM ? "negotiate" : "drop";
}

/** Parses the version 1 long header at the start of `data`; undefined when it is not one or is cut short. */
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

/**
 * Version negotiation by RFC 8999's invariants only, on the quiche engine's own endpoint: a
 * long-header datagram of a version the server does not speak is answered with Version
 * Negotiation when it has at least 1,200 bytes and dropped when smaller, whatever follows its
 * connection IDs (which may be up to 255 bytes long in other versions); a Version Negotiation
 * packet (version 0) is never answered.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import type { QuicServer } from "../../lib/transport/mod.ts";
import { quiche } from "../../lib/transport/quiche/binding.ts";
import { quicheEngine } from "../../lib/transport/quiche/mod.ts";
import { MIN_NEGOTIATION_DATAGRAM, parseInvariantHeader, versionAction } from "../../lib/transport/quiche/packet.ts";
import { scratchCerts } from "../harness.ts";
import { until } from "../wait.ts";
import { serverTls } from "./conformance.ts";
import { initialPacket } from "./packets.ts";

/** A long-header datagram of `version` with the given connection IDs, `size` bytes in all, random after the IDs. */
function longHeaderDatagram(fields: { first: number; version: number; dcid: Uint8Array; scid: Uint8Array; size: number }): Buffer {
  const head = Buffer.concat([
    Buffer.of(fields.first | 0x80),
    Buffer.alloc(4),
    Buffer.of(fields.dcid.length),
    fields.dcid,
    Buffer.of(fields.scid.length),
    fields.scid,
  ]);
  head.writeUInt32BE(fields.version, 1);
  return Buffer.concat([head, randomBytes(Math.max(0, fields.size - head.length))]);
}

/** Any version but 0 (Version Negotiation) and those quiche speaks. */
const unsupportedVersion = fc.integer({ min: 1, max: 0xffffffff }).filter((version) => !quiche.versionIsSupported(version));
/** Connection IDs as long as another version may make them: up to 255 bytes. */
const connectionId = fc.uint8Array({ minLength: 0, maxLength: 255 });
/** Sizes around the threshold more often than elsewhere. */
const size = fc.oneof(fc.integer({ min: 1, max: 1500 }), fc.integer({ min: 1190, max: 1210 }));

test("property: an unsupported version is negotiated from 1,200 bytes on and dropped below, whatever the tail", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 255 }),
      unsupportedVersion,
      connectionId,
      connectionId,
      size,
      (first, version, dcid, scid, length) => {
        const datagram = longHeaderDatagram({ first, version, dcid, scid, size: length });
        const expected = datagram.length >= MIN_NEGOTIATION_DATAGRAM ? "negotiate" : "drop";
        assert.equal(versionAction(datagram, quiche.versionIsSupported), expected);
        const header = parseInvariantHeader(datagram);
        assert.deepEqual(header && [header.version, Buffer.from(header.dcid), Buffer.from(header.scid)], [
          version,
          Buffer.from(dcid),
          Buffer.from(scid),
        ]);
      },
    ),
    { numRuns: 5_000 },
  );
});

test("property: a Version Negotiation packet is never answered, at any size", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 255 }), connectionId, connectionId, size, (first, dcid, scid, length) => {
      assert.equal(versionAction(longHeaderDatagram({ first, version: 0, dcid, scid, size: length }), quiche.versionIsSupported), "drop");
    }),
    { numRuns: 2_000 },
  );
});

test("version 1 goes on to the server's own parser; what is not a long header is dropped", () => {
  const v1 = longHeaderDatagram({ first: 0xc0, version: 1, dcid: randomBytes(8), scid: randomBytes(8), size: 1200 });
  assert.equal(versionAction(v1, quiche.versionIsSupported), "speak");
  assert.equal(versionAction(Buffer.from(v1).fill(0x40, 0, 1), quiche.versionIsSupported), "drop", "a short header");
  assert.equal(versionAction(v1.subarray(0, 6), quiche.versionIsSupported), "drop", "cut before the connection IDs");
  const cut = longHeaderDatagram({ first: 0xc0, version: 2, dcid: randomBytes(200), scid: randomBytes(8), size: 0 });
  assert.equal(versionAction(cut.subarray(0, 100), quiche.versionIsSupported), "drop", "a connection ID longer than the datagram");
});

describe("quiche server endpoint: Version Negotiation over UDP", () => {
  let server: QuicServer;
  let socket: dgram.Socket;
  /** Answers received, by the destination connection ID they carry (the probe's source ID), hex. */
  const answers = new Map<string, Buffer[]>();
  before(async () => {
    server = await quicheEngine.listen({ host: "127.0.0.1", port: 0, tls: serverTls(scratchCerts()) });
    socket = dgram.createSocket("udp4");
    socket.on("message", (message) => {
      const header = parseInvariantHeader(message);
      const key = header ? Buffer.from(header.dcid).toString("hex") : "unparsable";
      answers.set(key, [...(answers.get(key) ?? []), message]);
    });
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  });
  after(async () => {
    socket.close();
    await server.close();
  });

  /**
   * Sends `probes` and then a sentinel the server must answer, and resolves once the sentinel's
   * answer is in: the server handles one socket's datagrams in order, so every answer to a probe
   * has arrived by then.
   */
  const probe = async (probes: Buffer[]) => {
    for (const datagram of probes) socket.send(datagram, server.address().port, "127.0.0.1");
    // Laid out as a version 1 Initial, so that even a server that reads version 1's fields in
    // other versions' packets answers it.
    const sentinel = initialPacket({ version: 0x1a2a3a4a });
    socket.send(sentinel, server.address().port, "127.0.0.1");
    const sentinelId = Buffer.from(parseInvariantHeader(sentinel)?.scid ?? []).toString("hex");
    await until(() => answers.has(sentinelId), "the sentinel's Version Negotiation");
  };

  test("property: random datagrams of unknown versions and Version Negotiation packets, each answered exactly when it must be", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            first: fc.integer({ min: 0, max: 255 }),
            version: fc.oneof(unsupportedVersion, fc.constant(0)),
            dcid: connectionId,
            size,
          }),
          { minLength: 1, maxLength: 20 },
        ),
        async (specs) => {
          // Each probe's own source connection ID says which answer is its.
          const probes = specs.map((spec) => {
            const scid = randomBytes(8);
            return { ...spec, scid, datagram: longHeaderDatagram({ ...spec, scid }) };
          });
          await probe(probes.map((spec) => spec.datagram));
          for (const spec of probes) {
            const got = answers.get(spec.scid.toString("hex")) ?? [];
            const must = spec.version !== 0 && spec.datagram.length >= MIN_NEGOTIATION_DATAGRAM;
            const what = `version ${spec.version.toString(16)}, ${spec.datagram.length} bytes, DCID of ${spec.dcid.length}`;
            assert.equal(got.length, must ? 1 : 0, what);
            if (!must) continue;
            const [answer] = got;
            const header = parseInvariantHeader(answer);
            assert.equal(header?.version, 0, "a Version Negotiation packet");
            assert.deepEqual(Buffer.from(header?.scid ?? []), Buffer.from(spec.dcid), "its source ID is the probe's destination ID");
            const versions = answer.subarray(7 + spec.dcid.length + spec.scid.length);
            assert.ok(versions.length % 4 === 0 && versions.length > 0);
            assert.ok(
              Array.from({ length: versions.length / 4 }, (_, i) => versions.readUInt32BE(i * 4)).includes(1),
              "it offers version 1",
            );
          }
        },
      ),
      { numRuns: 60 },
    );
    const refused = server.stats().refused;
    assert.ok(
      refused.unsupported_version > 0 && refused.short_unsupported_version > 0 && refused.version_negotiation > 0,
      JSON.stringify(refused),
    );
  });
});

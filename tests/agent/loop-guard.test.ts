import assert from "node:assert/strict";
import { networkInterfaces } from "node:os";
import { test } from "node:test";
import fc from "fast-check";
import { leadsToServer, loopReason } from "../../lib/agent/loop-guard.ts";
import { acceptingAddresses } from "../../lib/server/frontends.ts";
import { dialAddress, resolveTarget } from "../../lib/tunnel/address.ts";

const at = (ip: string) => dialAddress(ip) ?? assert.fail(ip);

test("a specific listener is matched by address and port", () => {
  const server = { listeners: [{ host: "10.0.0.5", port: 8443 }], host: "10.0.0.5" };
  assert.equal(leadsToServer(at("10.0.0.5"), 8443, server), true);
  assert.equal(leadsToServer(at("::ffff:10.0.0.5"), 8443, server), true);
  assert.equal(leadsToServer(at("10.0.0.5"), 8444, server), false);
  assert.equal(leadsToServer(at("10.0.0.6"), 8443, server), false);
});

test("a wildcard listener is reached at the server's address, and anywhere on this machine when the server runs here", () => {
  const remote = { listeners: [{ host: "0.0.0.0", port: 8443 }], host: "192.0.2.10" };
  assert.equal(leadsToServer(at("192.0.2.10"), 8443, remote), true);
  assert.equal(leadsToServer(at("127.0.0.1"), 8443, remote), false, "this machine is not the server's");
  const local = { listeners: [{ host: "0.0.0.0", port: 8443 }], host: "127.0.0.1" };
  assert.equal(leadsToServer(at("127.0.0.1"), 8443, local), true);
  assert.equal(leadsToServer(at("127.0.0.2"), 8443, local), true);
  assert.equal(leadsToServer(at("::1"), 8443, local), true);
});

test("without the server's word (the reference's server) nothing is refused", () => {
  assert.equal(leadsToServer(at("127.0.0.1"), 8443, { listeners: undefined, host: "127.0.0.1" }), false);
});

test("the unspecified address is a loop on any port, whatever the server said, however it is spelled", async () => {
  const servers = [
    { listeners: undefined, host: "192.0.2.10" },
    { listeners: [], host: "192.0.2.10" },
    { listeners: [{ host: "127.0.0.1", port: 8443 }], host: "127.0.0.1" },
  ];
  // `0` and `0.0` are names to the CONNECT parser; the resolver reads them as 0.0.0.0.
  for (const spelling of ["0.0.0.0", "0", "0.0", "::", "0:0::0", "::ffff:0.0.0.0", "::ffff:0:0", "0.0.0.1", "0.255.255.255"]) {
    const [address] = await resolveTarget(spelling);
    for (const server of servers) {
      for (const port of [1, 22, 8443]) {
        assert.match(loopReason(address, { host: spelling, port }, server) ?? "", /unspecified address/, `${spelling}:${port}`);
      }
    }
  }
});

test("property: an address outside 0.0.0.0/8 and :: is never refused as unspecified", () => {
  const server = { listeners: undefined, host: "192.0.2.10" };
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (ip) => {
      const address = at(ip);
      const unspecified = address.family === 4 ? address.ip.startsWith("0.") : address.ip === "::";
      assert.equal(loopReason(address, { host: ip, port: 8443 }, server) !== undefined, unspecified, ip);
    }),
    { numRuns: 2_000 },
  );
});

test("a loop's reason names the target as written and the address it is dialed at", async () => {
  const server = { listeners: [{ host: "127.0.0.1", port: 8443 }], host: "127.0.0.1" };
  const [loopback] = await resolveTarget("127.1");
  assert.equal(
    loopReason(loopback, { host: "127.1", port: 8443 }, server),
    "127.1:8443 (127.0.0.1) is the tunnel server's own client listener",
  );
  assert.equal(
    loopReason(at("::"), { host: "::", port: 80 }, server),
    "[::]:80 is an unspecified address (0.0.0.0/8, ::), which is dialed as this host itself",
  );
  assert.equal(loopReason(loopback, { host: "127.1", port: 8444 }, server), undefined);
});

test("a server on a wildcard names its host's other addresses, and an agent elsewhere refuses them", () => {
  const own = Object.values(networkInterfaces())
    .flatMap((entries) => entries ?? [])
    .filter((entry) => !entry.internal)
    .map((entry) => at(entry.address));
  assert.deepEqual(
    acceptingAddresses({ host: "10.0.0.5", port: 8443 }),
    [{ host: "10.0.0.5", port: 8443 }],
    "a specific listener is itself",
  );
  const v4 = acceptingAddresses({ host: "0.0.0.0", port: 8443 });
  const any = acceptingAddresses({ host: "::", port: 8443 });
  assert.deepEqual(v4[0], { host: "0.0.0.0", port: 8443 });
  assert.deepEqual(any[0], { host: "::", port: 8443 });
  for (const address of own) {
    const named = { host: address.ip, port: 8443 };
    assert.deepEqual(
      v4.some((entry) => entry.host === named.host),
      address.family === 4,
      `0.0.0.0 names the IPv4 ${address.ip}, not IPv6`,
    );
    assert.ok(
      any.some((entry) => entry.host === named.host),
      `:: names ${address.ip}`,
    );
  }
  assert.ok(!any.some((entry) => at(entry.host).parsed.range() === "loopback"), "loopback is the agent's call");
  // An agent on another machine, reaching the server at a public address, learns a private one too.
  const remote = {
    listeners: [
      { host: "0.0.0.0", port: 8443 },
      { host: "198.51.100.7", port: 8443 },
    ],
    host: "192.0.2.10",
  };
  assert.match(loopReason(at("198.51.100.7"), { host: "198.51.100.7", port: 8443 }, remote) ?? "", /own client listener/);
  assert.match(loopReason(at("192.0.2.10"), { host: "192.0.2.10", port: 8443 }, remote) ?? "", /own client listener/);
  assert.equal(loopReason(at("198.51.100.8"), { host: "198.51.100.8", port: 8443 }, remote), undefined);
});

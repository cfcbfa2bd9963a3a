import assert from "node:assert/strict";
import { test } from "node:test";
import { announces, destination, formatIdentifiers, parseIdentifiers } from "../lib/identifiers.ts";

test("Konnectivity's --agent-identifiers syntax: hosts, addresses, CIDRs and the default route", () => {
  const identifiers = parseIdentifiers(
    "host=Node-3&host=node-3.cluster.local&ipv4=10.0.3.7&ipv6=fd00::7&cidr=10.0.3.0/24&default-route=true",
  );
  assert.deepEqual(identifiers.hosts, ["node-3", "node-3.cluster.local"]);
  assert.deepEqual(identifiers.addresses, ["10.0.3.7", "fd00::7"]);
  assert.equal(identifiers.defaultRoute, true);
  assert.deepEqual(parseIdentifiers(formatIdentifiers(identifiers)), identifiers, "formatted as parsed");
  assert.deepEqual(parseIdentifiers(""), { hosts: [], addresses: [], cidrs: [], defaultRoute: false });
});

test("what cannot be read is named", () => {
  for (const bad of ["ipv4=fd00::1", "ipv6=10.0.0.1", "cidr=10.0.0.0/33", "zone=a", "default-route=yes", "host=a b"]) {
    assert.throws(() => parseIdentifiers(bad), /cannot read/, bad);
  }
});

test("a target is announced by its name, its address in any spelling, or a CIDR that holds it", () => {
  const identifiers = parseIdentifiers("host=node-3&ipv4=10.0.3.7&cidr=10.0.4.0/24&cidr=fd00:4::/64");
  for (const host of ["node-3", "NODE-3", "10.0.3.7", "::ffff:10.0.3.7", "10.0.4.200", "fd00:4::9"])
    assert.ok(announces(identifiers, destination(host)), host);
  for (const host of ["node-4", "10.0.3.8", "10.0.5.1", "fd00:5::1", "node-3.other"])
    assert.ok(!announces(identifiers, destination(host)), host);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { leadsToServer } from "../../lib/agent/loop-guard.ts";
import { dialAddress } from "../../lib/tunnel/address.ts";

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

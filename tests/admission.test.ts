import assert from "node:assert/strict";
import { test } from "node:test";
import { HandshakeAdmission } from "../lib/admission.ts";

test("handshakes are admitted up to the per-address limit, and again once one ends", () => {
  const admission = new HandshakeAdmission({ maxHandshakes: 10, maxHandshakesPerAddress: 2 });
  const first = admission.admit("10.0.0.1");
  const second = admission.admit("10.0.0.1");
  assert.equal(typeof first, "function");
  assert.equal(typeof second, "function");
  assert.equal(admission.admit("10.0.0.1"), "address_limit");
  assert.equal(typeof admission.admit("10.0.0.2"), "function", "another address is not held back");
  (first as () => void)();
  (first as () => void)();
  assert.equal(admission.count, 2, "ending a handshake twice counts once");
  assert.equal(typeof admission.admit("10.0.0.1"), "function");
});

test("the overall limit holds across addresses", () => {
  const admission = new HandshakeAdmission({ maxHandshakes: 3, maxHandshakesPerAddress: 3 });
  const ends = ["a", "b", "c"].map((address) => admission.admit(address));
  assert.equal(admission.admit("d"), "handshake_limit");
  for (const end of ends) (end as () => void)();
  assert.equal(admission.count, 0);
  assert.equal(typeof admission.admit("d"), "function");
});

test("with busyAt, one address's burst passes while few are under way, and is capped once many are", () => {
  const admission = new HandshakeAdmission({ maxHandshakes: 1000, maxHandshakesPerAddress: 2 }, { busyAt: 4 });
  const burst = [1, 2, 3, 4].map(() => admission.admit("10.0.0.1"));
  assert.ok(
    burst.every((done) => typeof done === "function"),
    "four from one address while under four are under way",
  );
  assert.equal(admission.admit("10.0.0.1"), "address_limit");
  assert.equal(typeof admission.admit("10.0.0.2"), "function", "another address still gets in");
});

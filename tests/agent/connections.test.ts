import assert from "node:assert/strict";
import { test } from "node:test";
import { seatsWanted } from "../../lib/agent/connections.ts";

test("seats: one per replica announced and per --server entry; a name's addresses count only while servers name none", () => {
  // One name, dual stack (two addresses), one server that names itself: one seat, not two that churn.
  assert.equal(seatsWanted({ identified: true, announced: 1, given: 1, resolved: 2 }), 1);
  // The same name in front of servers that announce three replicas.
  assert.equal(seatsWanted({ identified: true, announced: 3, given: 1, resolved: 2 }), 3);
  // Three entries given, each its own server with the default count.
  assert.equal(seatsWanted({ identified: true, announced: 1, given: 3, resolved: 3 }), 3);
  // The reference's servers behind a headless name: one per address.
  assert.equal(seatsWanted({ identified: false, announced: 1, given: 1, resolved: 3 }), 3);
});

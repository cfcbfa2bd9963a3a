/**
 * The node-quic engine (the runtime's node:quic): the conformance suite, where the runtime has it.
 * Its module is loaded only there: elsewhere `node:quic` itself does not load.
 */
import { test } from "node:test";
import { hasNodeQuic, loadEngine } from "../../lib/transport/mod.ts";
import { conformanceSuite } from "./conformance.ts";

if (await hasNodeQuic()) conformanceSuite(await loadEngine("node-quic"));
else test("QUIC engine node-quic", { skip: "this runtime has no node:quic" }, () => {});

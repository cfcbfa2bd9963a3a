/**
 * The node-quic engine (the runtime's node:quic): the conformance suite, where the runtime has it.
 */
import { hasNodeQuic } from "../../lib/quic/mod.ts";
import { nodeQuicEngine } from "../../lib/quic/node-quic/mod.ts";
import { conformanceSuite } from "./conformance.ts";

conformanceSuite(nodeQuicEngine, { skip: (await hasNodeQuic()) ? undefined : "this runtime has no node:quic" });

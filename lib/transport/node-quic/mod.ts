/**
 * The node-quic engine: the runtime's built-in `node:quic` (Bun 1.4.5 implements it natively on
 * lsquic; Node's release builds compile it out and Deno has none). It needs no native addon, so it
 * is the engine of the linux-arm64 builds.
 *
 * @module
 */
import type { QuicEngine } from "../types.ts";
import { connect, peekCertificate } from "./client.ts";
import { transportCaveats } from "./options.ts";
import { listen, REBINDING_CAVEAT, RETRY_CAVEAT } from "./server.ts";

/** The node-quic engine. */
export const nodeQuicEngine: QuicEngine = {
  name: "node-quic",
  retryCaveat: RETRY_CAVEAT,
  rebindingCaveat: REBINDING_CAVEAT,
  transportCaveats,
  connect,
  listen,
  peekCertificate,
};

/**
 * Placeholder until the node:quic engine lands.
 *
 * @module
 */
import { QuicError } from "../errors.ts";
import type { QuicEngine } from "../types.ts";

export const nodeQuicEngine: QuicEngine = {
  name: "node-quic",
  connect: () => Promise.reject(new QuicError("not yet")),
  listen: () => Promise.reject(new QuicError("not yet")),
};

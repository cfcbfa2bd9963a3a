/**
 * The quiche native binding that `@matrixai/quic` ships. Loading it is the one runtime-sensitive
 * step of the transport, so it lives here alone: a compiled build can swap this module for one that
 * imports the `.node` file statically.
 *
 * @module
 */
import quiche from "@matrixai/quic/native/quiche.js";

export type {
  Config,
  Connection,
  ConnectionError,
  Header,
  PathStats,
  RecvInfo,
  SendInfo,
  Stats,
} from "@matrixai/quic/native/types.js";

export { quiche };

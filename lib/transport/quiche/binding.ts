/**
 * The quiche native binding that `@matrixai/quic` ships. Loading it is the one runtime-sensitive
 * step of the transport, so it lives here alone. A compiled build (scripts/build.ts) swaps the
 * package's own loader, `@matrixai/quic/dist/native/quiche.js`, for a static import of the addon.
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

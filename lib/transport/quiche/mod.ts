/**
 * The quiche engine: our own QUIC endpoint on the quiche binding that `@matrixai/quic` ships
 * (quiche 0.18), on every runtime where its linux-x64 addon loads; what `auto` picks there.
 *
 * @module
 */
import type { QuicEngine } from "../types.ts";
import { connect, peekCertificate } from "./client.ts";
import { listen } from "./server.ts";

/** The quiche engine. */
export const quicheEngine: QuicEngine = { name: "quiche", transportCaveats: () => [], connect, listen, peekCertificate };

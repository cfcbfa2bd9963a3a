/**
 * The QUIC layer: one interface ({@link QuicEngine}), several engines, picked at start-up by
 * `--quic-engine`. An engine's module is imported only when it is chosen, so a runtime never
 * loads the other's code (the quiche addon, or `node:quic`).
 *
 * @module
 */
import { QuicError } from "./errors.ts";
import type { EngineName, QuicEngine } from "./types.ts";

export { settled } from "./connection.ts";
export { QuicError } from "./errors.ts";
export { udpBufferShortfall } from "./socket-buffers.ts";
export type * from "./types.ts";

/** What `--quic-engine` accepts. */
export const ENGINE_CHOICES = ["auto", "quiche", "node-quic"] as const;

/** A value of `--quic-engine`. */
export type EngineChoice = (typeof ENGINE_CHOICES)[number];

/** True when this runtime has a working built-in `node:quic` (Bun 1.4.5 and later). */
export async function hasNodeQuic(): Promise<boolean> {
  try {
    const quic = await import("node:quic");
    return typeof quic.listen === "function" && typeof quic.connect === "function";
  } catch {
    return false;
  }
}

/** True when the quiche addon loads here (linux-x64, outside the arm64 builds). */
async function hasQuiche(): Promise<boolean> {
  try {
    await import("./quiche/mod.ts");
    return true;
  } catch {
    return false;
  }
}

/**
 * The engine `auto` picks here: quiche where its addon loads, `node-quic` elsewhere. Measured on
 * Bun 1.4.5 (see README): its node:quic buffers everything a peer sends to a stream that is not
 * read, without limit, so only quiche holds a fast sender back for a slow reader.
 */
async function autoEngine(): Promise<EngineName> {
  if (await hasQuiche()) return "quiche";
  return (await hasNodeQuic()) ? "node-quic" : "quiche";
}

/** Loads the engine named by `choice`; rejects with a QuicError when this runtime cannot run it. */
export async function loadEngine(choice: EngineChoice): Promise<QuicEngine> {
  const name = choice === "auto" ? await autoEngine() : choice;
  if (name === "node-quic") {
    if (!(await hasNodeQuic())) {
      throw new QuicError(
        "--quic-engine node-quic: this runtime has no node:quic (Bun 1.4.5 has it; Node's release builds and Deno do not)",
      );
    }
    return (await import("./node-quic/mod.ts")).nodeQuicEngine;
  }
  try {
    return (await import("./quiche/mod.ts")).quicheEngine;
  } catch (err) {
    throw new QuicError(`--quic-engine quiche: cannot load the quiche addon here: ${(err as Error).message}`, { cause: err });
  }
}

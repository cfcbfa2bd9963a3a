/**
 * Sending QUIC packets on a `node:dgram` socket, the one runtime-specific spot of the transport.
 * On Bun the socket's native handle offers `sendMany` (sendmmsg): packets go out in batches of 64
 * from reused buffers, about three times cheaper per packet than one `send` each. Elsewhere every
 * packet is copied and sent on its own (the copy matters: dgram may send on a later tick).
 *
 * @module
 */
import type dgram from "node:dgram";

/** Where one produced packet goes. */
export interface PacketTarget {
  length: number;
  host: string;
  port: number;
}

/** Fills `buffer` with the next packet and says where it goes, or returns null when done. */
export type PacketProducer = (buffer: Buffer) => PacketTarget | null;

/** Largest datagram handled (quiche never produces more than its configured payload size). */
export const MAX_DATAGRAM = 1500;
const BATCH = 64;

interface BunUdpHandle {
  sendMany(packets: unknown[]): number;
}

/** Bun's native UDP socket behind a bound node:dgram socket, when this runtime has one. */
function bunHandle(socket: dgram.Socket): BunUdpHandle | undefined {
  const state = Object.getOwnPropertySymbols(socket)
    .filter((symbol) => symbol.description === "state symbol")
    .map((symbol) => (socket as unknown as Record<symbol, { handle?: { socket?: Partial<BunUdpHandle> } }>)[symbol])[0];
  const handle = state?.handle?.socket;
  return typeof handle?.sendMany === "function" ? (handle as BunUdpHandle) : undefined;
}

/** Returns a function that sends every packet `produce` yields on the bound `socket`. */
export function packetSender(socket: dgram.Socket): (produce: PacketProducer) => void {
  const bun = bunHandle(socket);
  if (bun !== undefined) {
    const buffers = Array.from({ length: BATCH }, () => Buffer.allocUnsafe(MAX_DATAGRAM));
    const batch: unknown[] = [];
    return (produce) => {
      for (;;) {
        batch.length = 0;
        let count = 0;
        while (count < BATCH) {
          const buffer = buffers[count];
          const target = produce(buffer);
          if (target === null) break;
          batch.push(buffer.subarray(0, target.length), target.port, target.host);
          count++;
        }
        if (count > 0) {
          try {
            bun.sendMany(batch);
          } catch {
            // An ICMP error from a peer that went away (ECONNREFUSED) surfaces on the next send, and a
            // full socket buffer refuses packets: either way they are lost like any other, and QUIC's
            // loss recovery or idle timeout deals with it. Throwing here would take the process down.
          }
        }
        if (count < BATCH) return;
      }
    };
  }
  const buffer = Buffer.allocUnsafe(MAX_DATAGRAM);
  return (produce) => {
    for (let target = produce(buffer); target !== null; target = produce(buffer)) {
      socket.send(Buffer.from(buffer.subarray(0, target.length)), target.port, target.host);
    }
  };
}

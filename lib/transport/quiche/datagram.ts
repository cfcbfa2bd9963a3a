/**
 * The UDP socket under the quiche engine, the one runtime-specific spot of that engine. On Bun the
 * socket's native handle offers `sendMany` (sendmmsg): packets go out in batches of 64 from reused
 * buffers, about three times cheaper per packet than one `send` each; and datagrams are taken from
 * that handle's own callback, without node:dgram's event and address object per datagram (8% less
 * CPU per GiB in a download). On Deno on Linux the socket comes from `Deno.listenDatagram` and
 * packets leave through libc's `sendto` (datagram-deno.ts).
 * Elsewhere, and on Deno where that module cannot work, every packet is copied and sent on its own
 * (the copy matters: `node:dgram` may send on a later tick).
 *
 * @module
 */
import dgram from "node:dgram";
import { UDP_SOCKET_BUFFER_BYTES } from "../socket-buffers.ts";
import { bindDenoDatagramSocket, openDenoUdp } from "./datagram-deno.ts";

/** Where one produced packet goes. */
export interface PacketTarget {
  length: number;
  host: string;
  port: number;
}

/** Fills `buffer` with the next packet and says where it goes, or returns null when done. */
export type PacketProducer = (buffer: Buffer) => PacketTarget | null;

/** The sender of a received datagram. */
export interface DatagramSource {
  address: string;
  port: number;
}

/** A bound UDP socket as the engine uses it. */
export interface DatagramSocket {
  /** The bound local address. */
  readonly local: { host: string; port: number };
  /**
   * Calls `handler` for every datagram. The buffer is valid only during the call: on Deno the next
   * datagram is read into the same memory.
   */
  onMessage(handler: (datagram: Buffer, source: DatagramSource) => void): void;
  /** Sends every packet `produce` yields, batched where the runtime can. */
  send(produce: PacketProducer): void;
  /** Sends one datagram (copied first). */
  sendTo(datagram: Uint8Array, host: string, port: number): void;
  /** Closes the socket. */
  close(): Promise<void>;
}

/** Largest datagram handled (quiche never produces more than its configured payload size). */
export const MAX_DATAGRAM = 1500;
const BATCH = 64;

interface BunUdpHandle {
  sendMany(packets: unknown[]): number;
  send(datagram: Uint8Array, port: number, address: string): boolean;
  reload(handlers: {
    socket: { data(socket: unknown, datagram: Buffer, port: number, address: string): void; error(socket: unknown, error: Error): void };
  }): void;
}

/** Bun's native UDP socket behind a bound node:dgram socket, when this runtime has one. */
function bunHandle(socket: dgram.Socket): BunUdpHandle | undefined {
  const state = Object.getOwnPropertySymbols(socket)
    .filter((symbol) => symbol.description === "state symbol")
    .map((symbol) => (socket as unknown as Record<symbol, { handle?: { socket?: Partial<BunUdpHandle> } }>)[symbol])[0];
  const handle = state?.handle?.socket;
  return typeof handle?.sendMany === "function" && typeof handle.reload === "function" && typeof handle.send === "function"
    ? (handle as BunUdpHandle)
    : undefined;
}

/** A sender of produced packets on the bound `socket`, through Bun's handle where there is one. */
function packetSender(socket: dgram.Socket, bun: BunUdpHandle | undefined): (produce: PacketProducer) => void {
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

/**
 * Binds a UDP socket on `host:port` (port 0: any). `family` picks IPv4 or IPv6 when `host` is a
 * wildcard. Rejects with an Error naming the address when binding fails.
 */
export async function bindDatagramSocket(options: { host: string; port: number; family: 4 | 6 }): Promise<DatagramSocket> {
  const deno = openDenoUdp();
  if (deno !== undefined) {
    return bindDenoDatagramSocket(deno, { ...options, packetBytes: MAX_DATAGRAM, bufferBytes: UDP_SOCKET_BUFFER_BYTES });
  }
  const socket = dgram.createSocket(options.family === 6 ? "udp6" : "udp4");
  await new Promise<void>((resolve, reject) => {
    socket.once("error", (err) => {
      socket.close();
      reject(err);
    });
    socket.bind(options.port, options.host, () => resolve());
  });
  socket.removeAllListeners("error");
  // ICMP errors (port unreachable) surface here (on Bun, in the handle's error handler set in onMessage);
  // QUIC's timers report a peer that is gone.
  socket.on("error", () => {});
  try {
    if ("Deno" in globalThis) {
      // Deno's node:dgram (without --unstable-net, say) never resizes the kernel's buffers: it allocates
      // a fresh receive buffer of twice this size for every datagram, so 4 MiB here cost 8 MiB per
      // packet and held a tunnel to ~1 MiB/s. The smallest size that fits every packet is fastest.
      socket.setRecvBufferSize(MAX_DATAGRAM);
    } else {
      socket.setRecvBufferSize(UDP_SOCKET_BUFFER_BYTES);
      socket.setSendBufferSize(UDP_SOCKET_BUFFER_BYTES);
    }
  } catch {
    // Some runtimes cannot resize; the kernel default still works, only slower.
  }
  const address = socket.address();
  const bun = bunHandle(socket);
  const send = packetSender(socket, bun);
  return {
    local: { host: address.address, port: address.port },
    onMessage: (handler) => {
      if (bun === undefined) {
        socket.on("message", (datagram, rinfo) => handler(datagram, rinfo));
        return;
      }
      // The handlers replace node:dgram's own; its send queue is not used on Bun (see sendTo).
      bun.reload({
        socket: { data: (_socket, datagram, port, address) => handler(datagram, { address, port }), error: () => {} },
      });
    },
    send,
    sendTo: (datagram, host, port) => {
      if (bun === undefined) {
        socket.send(Buffer.from(datagram), port, host);
        return;
      }
      try {
        // Synchronous: the datagram is copied out before this returns. A full buffer loses it.
        bun.send(datagram, port, host);
      } catch {
        // an ICMP error of an earlier packet, or a full buffer: lost like any other packet
      }
    },
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

/**
 * The quiche engine's UDP socket on Deno (Linux with glibc). Deno's `node:dgram` allocates a fresh
 * receive buffer for every datagram, sized from `setRecvBufferSize`, and never resizes the kernel's
 * buffers, so a tunnel on it moved about 1 MiB/s. Here:
 * - `Deno.listenDatagram` (unstable: `--unstable-net` or `"unstable": ["net"]` in deno.json) binds
 *   the socket, and one receive loop reads every datagram into the same buffer;
 * - packets are sent with libc's `sendto` through FFI, synchronously and in order. Deno's own `send`
 *   costs an async op per packet (twice the time), and sends left to run concurrently leave out of
 *   order, which quiche counts as loss;
 * - `setsockopt` through FFI raises the kernel buffers as on the other runtimes (the 208 KiB default
 *   dropped packets at tunnel speeds), since `Deno.listenDatagram` has no option for it. The
 *   socket's descriptor is found in /proc/self/fd.
 *
 * FFI is granted wherever the quiche addon loads (Deno needs --allow-ffi for it). Where this module
 * cannot work (no unstable net API, no glibc, /proc unreadable) {@link openDenoUdp} says so and the
 * caller stays on `node:dgram`. Deno's types are not visible to tsc (Node types), so the members
 * used here are declared locally and reached through `globalThis`.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { readdirSync, readlinkSync } from "node:fs";
import { isIP } from "node:net";
import type { DatagramSocket, DatagramSource, PacketProducer } from "./datagram.ts";

/** A UDP address as `Deno.listenDatagram` takes and reports it. */
interface UdpAddress {
  transport: "udp";
  hostname: string;
  port: number;
}

/** The members of `Deno.DatagramConn` used here. */
interface DenoDatagramConn {
  readonly addr: UdpAddress;
  /** Reads one datagram into `buffer` (truncating a longer one) and returns a view of it. */
  receive(buffer: Uint8Array): Promise<[Uint8Array, UdpAddress]>;
  close(): void;
}

/** The libc functions used here, as `Deno.dlopen` returns them. */
interface Libc {
  sendto(fd: number, data: Uint8Array, length: number, flags: number, address: Uint8Array, addressLength: number): number | bigint;
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, length: number): number;
  getsockopt(fd: number, level: number, name: number, value: Uint8Array, length: Uint8Array): number;
  getsockname(fd: number, address: Uint8Array, length: Uint8Array): number;
}

interface DenoUdpApi {
  listenDatagram?: (options: UdpAddress) => DenoDatagramConn;
  dlopen?: (path: string, symbols: Record<keyof Libc, { parameters: string[]; result: string }>) => { symbols: Libc };
}

/** What {@link bindDenoDatagramSocket} needs of the runtime. */
export interface DenoUdp {
  listenDatagram: (options: UdpAddress) => DenoDatagramConn;
  libc: Libc;
}

/** Large enough for any UDP datagram: `receive` would truncate a longer one without saying so. */
const RECEIVE_BYTES = 65536;
const AF_INET = 2;
const AF_INET6 = 10;
const SOL_SOCKET = 1;
const SO_TYPE = 3;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SOCK_DGRAM = 2;
const SOCKADDR_IN_BYTES = 16;
const SOCKADDR_IN6_BYTES = 28;

let denoUdp: DenoUdp | null | undefined;

/**
 * The Deno APIs this module needs, or undefined when this is not Deno or they are missing: the
 * unstable `Deno.listenDatagram`, glibc through FFI, and a readable /proc/self/fd.
 */
export function openDenoUdp(): DenoUdp | undefined {
  if (denoUdp === undefined) {
    denoUdp = null;
    // Through `unknown`: under Deno's own types the real declarations do not match these local ones.
    const deno = (globalThis as unknown as { Deno?: DenoUdpApi }).Deno;
    const listenDatagram = deno?.listenDatagram;
    const dlopen = deno?.dlopen;
    if (process.platform === "linux" && typeof listenDatagram === "function" && typeof dlopen === "function") {
      try {
        readdirSync("/proc/self/fd");
        const libc = dlopen("libc.so.6", {
          sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
          setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
          getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
          getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
        }).symbols;
        denoUdp = { listenDatagram: listenDatagram.bind(deno), libc };
      } catch {
        // No FFI or read permission, or no glibc (musl names its libc otherwise).
      }
    }
  }
  return denoUdp ?? undefined;
}

/** The descriptor of this process's UDP socket bound to `port`, found through /proc/self/fd. */
function udpSocketFd(libc: Libc, port: number): number | undefined {
  const address = new Uint8Array(128);
  const length = new Uint8Array(4);
  const type = new Uint8Array(4);
  for (const entry of readdirSync("/proc/self/fd")) {
    const fd = Number(entry);
    try {
      if (!readlinkSync(`/proc/self/fd/${entry}`).startsWith("socket:")) continue;
    } catch {
      continue; // closed meanwhile (the directory's own descriptor, for one)
    }
    new DataView(length.buffer).setUint32(0, address.length, true);
    if (libc.getsockname(fd, address, length) !== 0) continue;
    // sockaddr_in and sockaddr_in6 both keep the port, big-endian, at byte 2.
    if (new DataView(address.buffer).getUint16(2, false) !== port) continue;
    new DataView(length.buffer).setUint32(0, type.length, true);
    if (libc.getsockopt(fd, SOL_SOCKET, SO_TYPE, type, length) !== 0) continue;
    if (new DataView(type.buffer).getInt32(0, true) === SOCK_DGRAM) return fd;
  }
  return undefined;
}

/** Writes the 16 bytes of the IPv6 literal `host` (a dotted IPv4 tail allowed, a zone ignored) at `at`. */
function writeIpv6(host: string, out: Uint8Array, at: number): void {
  const words = (part: string): number[] =>
    part === ""
      ? []
      : part.split(":").flatMap((piece) => {
          if (!piece.includes(".")) return [Number.parseInt(piece, 16)];
          const [a, b, c, d] = piece.split(".").map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const literal = host.split("%")[0];
  const gap = literal.indexOf("::");
  const head = words(gap < 0 ? literal : literal.slice(0, gap));
  const tail = gap < 0 ? [] : words(literal.slice(gap + 2));
  const all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  for (let i = 0; i < 8; i++) {
    out[at + 2 * i] = all[i] >> 8;
    out[at + 2 * i + 1] = all[i] & 0xff;
  }
}

/**
 * Writes the socket address of `host:port` into `out` for a socket of `family` and returns its
 * length. An IPv4 destination of an IPv6 socket becomes an IPv4-mapped address.
 */
function writeSockaddr(family: 4 | 6, host: string, port: number, out: Uint8Array): number {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.fill(0);
  view.setUint16(2, port, false);
  if (family === 4) {
    view.setUint16(0, AF_INET, true);
    out.set(host.split(".").map(Number), 4);
    return SOCKADDR_IN_BYTES;
  }
  view.setUint16(0, AF_INET6, true);
  writeIpv6(isIP(host) === 4 ? `::ffff:${host}` : host, out, 8);
  return SOCKADDR_IN6_BYTES;
}

/**
 * Binds a UDP socket on `host:port` with the APIs from {@link openDenoUdp}. A host name is resolved
 * to an address of `family` first, as `node:dgram` does. `packetBytes` is the size of the buffer
 * handed to a packet producer, `bufferBytes` the kernel buffer size asked for each direction.
 * Rejects when resolving or binding fails.
 */
export async function bindDenoDatagramSocket(
  deno: DenoUdp,
  options: { host: string; port: number; family: 4 | 6; packetBytes: number; bufferBytes: number },
): Promise<DatagramSocket> {
  const hostname = isIP(options.host) !== 0 ? options.host : (await lookup(options.host, { family: options.family })).address;
  const conn = deno.listenDatagram({ transport: "udp", hostname, port: options.port });
  const local = { host: conn.addr.hostname, port: conn.addr.port };
  const fd = udpSocketFd(deno.libc, local.port);
  if (fd === undefined) {
    conn.close();
    throw new Error(`cannot find the descriptor of UDP socket ${local.host}:${local.port} in /proc/self/fd`);
  }
  const size = new Uint8Array(4);
  new DataView(size.buffer).setInt32(0, options.bufferBytes, true);
  // Capped by net.core.rmem_max / wmem_max; a failure leaves the default: slower, still correct.
  deno.libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, size, size.length);
  deno.libc.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, size, size.length);

  const family = isIP(local.host) === 6 ? 6 : 4;
  const packet = Buffer.allocUnsafe(options.packetBytes);
  // The encoded destination, kept while packets keep going to the same peer.
  const sockaddr = new Uint8Array(SOCKADDR_IN6_BYTES);
  let sockaddrLength = 0;
  let sockaddrHost = "";
  let sockaddrPort = -1;
  let closed = false;
  let receiving: Promise<void> | undefined;

  /**
   * Sends `length` bytes of `data` at once: the kernel has copied them when `sendto` returns. A
   * failure (full socket buffer, unreachable network) is a lost packet, which QUIC's loss recovery
   * or idle timeout deals with, so its result is not looked at.
   */
  const sendNow = (data: Uint8Array, length: number, host: string, port: number) => {
    if (host !== sockaddrHost || port !== sockaddrPort) {
      sockaddrLength = writeSockaddr(family, host, port, sockaddr);
      sockaddrHost = host;
      sockaddrPort = port;
    }
    deno.libc.sendto(fd, data, length, 0, sockaddr, sockaddrLength);
  };

  return {
    local,
    onMessage: (handler) => {
      if (receiving !== undefined) throw new Error("a Deno datagram socket takes one message handler");
      const buffer = Buffer.alloc(RECEIVE_BYTES);
      receiving = (async () => {
        for (;;) {
          let received: [Uint8Array, UdpAddress];
          try {
            received = await conn.receive(buffer);
          } catch (err) {
            // Interrupted or BadResource: the socket was closed. Anything else is one lost datagram.
            if (closed) return;
            const name = (err as Error | undefined)?.name;
            if (name === "Interrupted" || name === "BadResource") return;
            continue;
          }
          const [data, from] = received;
          const source: DatagramSource = { address: from.hostname, port: from.port };
          try {
            handler(Buffer.from(buffer.buffer, buffer.byteOffset, data.length), source);
          } catch (err) {
            // As a throwing `message` listener would: the error surfaces, the socket keeps receiving.
            queueMicrotask(() => {
              throw err;
            });
          }
        }
      })();
    },
    send: (produce: PacketProducer) => {
      if (closed) return;
      for (let target = produce(packet); target !== null; target = produce(packet)) {
        sendNow(packet, target.length, target.host, target.port);
      }
    },
    sendTo: (datagram, host, port) => {
      if (!closed) sendNow(datagram, datagram.length, host, port);
    },
    close: async () => {
      if (closed) return;
      closed = true;
      conn.close();
      await receiving;
    },
  };
}

/**
 * Keeps reading the TLS socket under Node's HTTP/2, so that two sides writing at once cannot
 * deadlock. Node's HTTP/2 stops reading its socket while one of its own writes is pending (its guard
 * against peers that never read). When both sides send more than the kernel buffers between them
 * hold, both writes pend, neither side reads, and the connection is stuck until the idle timeout
 * (measured: 200 streams echoing 1 MiB each on a loaded 2-core machine, both sockets' Recv-Q and
 * Send-Q full, 3 of 3 runs). RFC 9113 §6.9 asks a receiver to read its TCP buffer in a timely fashion
 * for this reason. Bun's and Deno's HTTP/2 keep reading and get the socket as it is.
 *
 * What is read ahead is bounded: the peer can send at most the connection window this side grants,
 * and beyond that plus room for frames the socket is paused, as Node would have done.
 *
 * @module
 */

import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";

/** Room for frames beside the data that the connection window allows (HEADERS, PINGs, SETTINGS). */
const FRAME_ROOM = 1 << 20;

/** True where HTTP/2 stops reading while it writes: Node (Bun and Deno also set `versions.node`). */
const needsReadAhead = !("Bun" in globalThis) && !("Deno" in globalThis);

/**
 * The stream to hand to `node:http2` for `socket`: on Node, a Duplex that reads the socket ahead of
 * HTTP/2 by up to `connectionWindow` plus room for frames; elsewhere the socket itself.
 */
export function http2Transport(socket: TLSSocket, options: { connectionWindow: number }): Duplex {
  return needsReadAhead ? new ReadAhead(socket, options.connectionWindow + FRAME_ROOM) : socket;
}

/** A Duplex over a socket whose reading goes on while its reader is paused, up to `limit` bytes. */
export class ReadAhead extends Duplex {
  readonly #socket: Socket;

  constructor(socket: Socket, limit: number) {
    super({ allowHalfOpen: true });
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => {
      if (!this.push(chunk) && this.readableLength > limit) socket.pause();
    });
    socket.once("end", () => this.push(null));
    socket.on("error", (err) => this.destroy(err));
    socket.once("close", () => this.destroy());
  }

  override _read(): void {
    this.#socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#socket.write(chunk, callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    const last = chunks.length - 1;
    chunks.forEach(({ chunk }, index) => {
      this.#socket.write(chunk, index === last ? callback : undefined);
    });
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#socket.end(callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#socket.destroy(error ?? undefined);
    callback(error);
  }
}

/**
 * What both ends of the TCP transport's HTTP/2 agree on, from the transport options.
 *
 * @module
 */
import type { Settings } from "node:http2";
import type { TLSSocket } from "node:tls";
import type { TransportOptions } from "../../protocol.ts";

/** HTTP/2's largest window (2^31 - 1). */
const MAX_WINDOW = 2 ** 31 - 1;
/** Larger DATA frames than HTTP/2's 16 KiB default: fewer frame headers and calls per MiB. */
const MAX_FRAME_SIZE = 64 * 1024;

/**
 * The stream window a side grants: as asked, but at least half the connection's window. Bun 1.4.5's
 * HTTP/2 sends a stream's WINDOW_UPDATE only once half the connection's window has been consumed,
 * so a stream whose whole window is smaller stalls for good after its first window (measured: 1 MiB
 * streams on an 8 MiB connection stopped at exactly 1 MiB; 4 MiB streams flowed). Node does not.
 */
export function streamWindow(transport: TransportOptions): number {
  return Math.min(Math.max(transport.streamWindow, Math.ceil(transport.connectionWindow / 2)), MAX_WINDOW);
}

/** The SETTINGS a side sends: its stream window, and how many streams the peer may open. */
function http2Settings(transport: TransportOptions): Settings {
  return {
    enablePush: false,
    // One more than asked: the server's opener stream takes one.
    maxConcurrentStreams: transport.maxStreams + 1,
    initialWindowSize: streamWindow(transport),
    maxFrameSize: MAX_FRAME_SIZE,
  };
}

/**
 * What a side's HTTP/2 session is made with: its SETTINGS, and the memory Node lets it hold before
 * it refuses new streams with ENHANCE_YOUR_CALM (`maxSessionMemory`, in MB; 10 by default). Node
 * counts the data its streams have been given and not yet sent; 200 streams echoing at once went
 * past 32 MB. At least 64 MB, and four connection windows: what the window lets in, as much again
 * on its way out, and as much again for the writes behind them. Bun's HTTP/2 ignores it.
 */
export function sessionOptions(transport: TransportOptions): { settings: Settings; maxSessionMemory: number } {
  const windowsMb = Math.ceil((4 * transport.connectionWindow) / (1 << 20));
  return { settings: http2Settings(transport), maxSessionMemory: Math.max(64, windowsMb) };
}

/**
 * Lets Bun's HTTP/2 client run on a socket that negotiated our own ALPN: Bun 1.4.5 refuses a TLS
 * socket whose `alpnProtocol` is not `h2` ("h2 is not supported"), Node does not look. Called
 * only after the ALPN has been checked.
 */
export function passAlpnCheck(socket: TLSSocket): void {
  Object.defineProperty(socket, "alpnProtocol", { value: "h2", configurable: true });
}

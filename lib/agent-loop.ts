/**
 * The agent's life: dial the server, serve the streams it opens, and when the connection ends dial
 * again after a capped, jittered exponential backoff. Shared by agent.ts and agent-tcp.ts.
 *
 * @module
 */
import { Backoff, type BackoffOptions } from "./backoff.ts";
import { formatHostPort, type HostPort } from "./hostport.ts";
import type { Logger } from "./log.ts";
import { GOAWAY } from "./protocol.ts";
import type { QuicConnection, QuicEngine, QuicError, QuicStream, TlsMaterial, TransportOptions } from "./quic/mod.ts";

/** Options for {@link runAgent}. */
export interface AgentOptions {
  /** The QUIC engine that dials. */
  engine: QuicEngine;
  server: HostPort;
  serverName: string;
  /** The certificates for the next connection attempt (they may be reloaded between attempts). */
  tls: () => TlsMaterial;
  transport: Partial<TransportOptions>;
  backoff: BackoffOptions;
  log: Logger;
  /** A connection that lasted this long resets the backoff (default 10 s). */
  stableAfterMs?: number;
}

/** A running agent loop. */
export interface AgentHandle {
  /** The connection to the server, while there is one. */
  readonly connection: QuicConnection | undefined;
  /** Asks the server to route no new tunnels here (before a graceful stop). */
  goAway(): Promise<void>;
  /** Closes the current connection and stops reconnecting. */
  stop(): void;
  /** Resolves when the loop has stopped. */
  done: Promise<void>;
}

/**
 * Keeps one QUIC connection to the server up for as long as the process runs, handing every stream
 * the server opens to `onStream`. Each stream is served on its own, so a slow one blocks nothing.
 */
export function runAgent(options: AgentOptions, onStream: (stream: QuicStream, connection: QuicConnection) => void): AgentHandle {
  const { log } = options;
  const server = formatHostPort(options.server);
  const backoff = new Backoff(options.backoff);
  let stopped = false;
  let current: QuicConnection | undefined;
  let wake: (() => void) | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function loop(): Promise<void> {
    while (!stopped) {
      log.debug("dialing server {server}", { server });
      let connection: QuicConnection;
      try {
        connection = await options.engine.connect({
          host: options.server.host,
          port: options.server.port,
          serverName: options.serverName,
          tls: options.tls(),
          transport: options.transport,
        });
      } catch (err) {
        const delay = backoff.next();
        log.warn("cannot connect to server {server}: {error}; retrying in {delay} ms", { server, error: err, delay });
        await sleep(delay);
        continue;
      }
      if (stopped) {
        connection.close(0, "agent stopping");
        break;
      }
      current = connection;
      const since = Date.now();
      log.info("connected to server {server}", { server, subject: connection.peerSubject });
      connection.on("stream", (stream) => onStream(stream, connection));
      const error = await new Promise<QuicError | undefined>((resolve) => connection.once("close", resolve));
      current = undefined;
      if (stopped) break;
      if (Date.now() - since >= (options.stableAfterMs ?? 10_000)) backoff.reset();
      const delay = backoff.next();
      log.warn("connection to server {server} lost: {reason}; reconnecting in {delay} ms", {
        server,
        reason: error?.message ?? "closed",
        delay,
      });
      await sleep(delay);
    }
    log.info("agent stopped");
  }

  return {
    get connection() {
      return current;
    },
    async goAway() {
      try {
        (await current?.openStream())?.on("error", () => {}).end(GOAWAY);
      } catch (err) {
        log.warn("cannot tell the server to stop routing here: {error}", { error: err });
      }
    },
    stop() {
      stopped = true;
      current?.close(0, "agent stopping");
      wake?.();
    },
    done: loop(),
  };
}

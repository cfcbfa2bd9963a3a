/**
 * The agent's life: dial the server, serve the streams it opens, and when the connection ends dial
 * again after a capped, jittered exponential backoff. Shared by agent.ts and agent-tcp.ts.
 *
 * A connection takes only so many tunnels at once (`incomingStreamLimit`; 100 on the node-quic
 * engine, whose client cannot take more). When the open connections are half full, more are
 * dialed; an extra connection that has carried nothing for a while is closed again.
 *
 * @module
 */

import { formatHostPort, type HostPort } from "../hostport.ts";
import type { Logger } from "../ops/log.ts";
import { GOAWAY } from "../protocol.ts";
import type { QuicConnection, QuicEngine, QuicError, QuicStream, TlsMaterial, TransportOptions } from "../quic/mod.ts";
import { Backoff, type BackoffOptions } from "./backoff.ts";

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
  /** Connections at most, the first included (default 1: no extra connections). */
  maxConnections?: number;
  /** An extra connection idle this long is closed (default 30 s). */
  extraIdleMs?: number;
}

/** A running agent loop. */
export interface AgentHandle {
  /** The connections to the server, the first (kept up with reconnects) first. */
  readonly connections: readonly QuicConnection[];
  /** Asks the server to route no new tunnels here (before a graceful stop). */
  goAway(): Promise<void>;
  /** Closes the connections and stops reconnecting. */
  stop(): void;
  /** Resolves when the loop has stopped. */
  done: Promise<void>;
}

/**
 * Open connections are this full (streams over limits) when another one is dialed. lsquic returns
 * stream credit in batches and keeps a few back, so the margin is wide.
 */
const SCALE_AT = 0.5;

/**
 * Keeps a QUIC connection to the server up for as long as the process runs (and more while the
 * load needs them), handing every stream the server opens to `onStream`. Each stream is served on
 * its own, so a slow one blocks nothing.
 */
export function runAgent(options: AgentOptions, onStream: (stream: QuicStream, connection: QuicConnection) => void): AgentHandle {
  const { log } = options;
  const server = formatHostPort(options.server);
  const backoff = new Backoff(options.backoff);
  const maxConnections = options.maxConnections ?? 1;
  let stopped = false;
  let primary: QuicConnection | undefined;
  const extras = new Set<QuicConnection>();
  let dialing = 0;
  let wake: (() => void) | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  const all = () => (primary ? [primary, ...extras] : [...extras]);

  const dial = () =>
    options.engine.connect({
      host: options.server.host,
      port: options.server.port,
      serverName: options.serverName,
      tls: options.tls(),
      transport: options.transport,
    });

  /** Serves the streams of `connection`; dials more connections when they fill up. */
  function serve(connection: QuicConnection): void {
    connection.on("stream", (stream) => {
      onStream(stream, connection);
      scale(connection.incomingStreamLimit);
    });
  }

  /** Dials as many connections as keep the open ones (and those being dialed) below {@link SCALE_AT} full. */
  function scale(perConnection: number): void {
    const connections = all();
    const used = connections.reduce((sum, c) => sum + c.streamCount, 0);
    const needed = Math.min(maxConnections, Math.ceil((used + 1) / (SCALE_AT * perConnection)));
    for (let count = connections.length + dialing; count < needed && !stopped; count++) void dialExtra();
  }

  async function dialExtra(): Promise<void> {
    dialing++;
    try {
      const connection = await dial();
      if (stopped) {
        connection.close(0, "agent stopping");
        return;
      }
      extras.add(connection);
      serve(connection);
      log.info("opened connection {count} to server {server}: the others are half full", { server, count: all().length });
      let idleSince = Date.now();
      const idleCheck = setInterval(() => {
        if (connection.streamCount > 0) idleSince = Date.now();
        else if (Date.now() - idleSince >= (options.extraIdleMs ?? 30_000)) connection.close(0, "idle extra connection");
      }, 1000);
      idleCheck.unref?.();
      connection.once("close", () => {
        clearInterval(idleCheck);
        extras.delete(connection);
      });
    } catch (err) {
      log.warn("cannot open another connection to server {server}: {error}", { server, error: err });
    } finally {
      dialing--;
    }
  }

  async function loop(): Promise<void> {
    while (!stopped) {
      log.debug("dialing server {server}", { server });
      let connection: QuicConnection;
      try {
        connection = await dial();
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
      primary = connection;
      const since = Date.now();
      log.info("connected to server {server}", { server, subject: connection.peerSubject });
      serve(connection);
      const error = await new Promise<QuicError | undefined>((resolve) => connection.once("close", resolve));
      primary = undefined;
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
    get connections() {
      return all();
    },
    async goAway() {
      await Promise.all(
        all().map(async (connection) => {
          try {
            (await connection.openStream()).on("error", () => {}).end(GOAWAY);
          } catch (err) {
            log.warn("cannot tell the server to stop routing here: {error}", { error: err });
          }
        }),
      );
    },
    stop() {
      stopped = true;
      for (const connection of all()) connection.close(0, "agent stopping");
      wake?.();
    },
    done: loop(),
  };
}

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

import { type AgentKind, type Announcement, announceAgent, sendGoAway } from "../control.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../hostport.ts";
import { type AGENT_FLAGS, transportOptions } from "../ops/cli.ts";
import type { FlagValues } from "../ops/flags.ts";
import type { Logger } from "../ops/log.ts";
import { Gauge, type Registry } from "../ops/metrics.ts";
import { registerQuicMetrics } from "../ops/quic-metrics.ts";
import {
  type QuicConnection,
  type QuicEngine,
  type QuicError,
  type QuicStream,
  settled,
  type TlsMaterial,
  type TransportOptions,
} from "../transport/mod.ts";
import type { Tunnels } from "../tunnel/slots.ts";
import { Backoff, type BackoffOptions } from "./backoff.ts";
import { explainServerCertificate } from "./diagnose.ts";
import type { ServerInfo } from "./loop-guard.ts";

/** Options for {@link runAgent}. */
export interface AgentOptions {
  /** What clients of this agent speak, told to the server as each connection starts. */
  kind: AgentKind;
  /** The QUIC engine that dials. */
  engine: QuicEngine;
  server: HostPort;
  serverName: string;
  /** The certificates for the next connection attempt (they may be reloaded between attempts). */
  tls: () => TlsMaterial;
  transport: Partial<TransportOptions>;
  backoff: BackoffOptions;
  log: Logger;
  /** Connections at most, the first included (default 1: no extra connections). */
  maxConnections?: number;
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
/** A connection that lasted this long resets the reconnect backoff. */
const STABLE_AFTER_MS = 10_000;
/** An extra connection idle this long is closed. */
const EXTRA_IDLE_MS = 30_000;
/** How long the server may take to answer the hello (the reference's server never answers). */
const HELLO_TIMEOUT_MS = 1_000;

/**
 * Keeps a QUIC connection to the server up for as long as the process runs (and more while the
 * load needs them), handing every stream the server opens to `onStream`. Each stream is served on
 * its own, so a slow one blocks nothing.
 */
export function runAgent(options: AgentOptions, onStream: (stream: QuicStream, server: ServerInfo) => void): AgentHandle {
  const { log } = options;
  const server = formatHostPort(options.server);
  const backoff = new Backoff(options.backoff);
  const maxConnections = options.maxConnections ?? 1;
  let stopped = false;
  let primary: QuicConnection | undefined;
  const extras = new Set<QuicConnection>();
  let dialing = 0;
  // A stop must not wait for a dial in flight (up to --handshake-timeout) or the backoff after it.
  // Each waiter leaves this set when it is done, so a long run of reconnects holds nothing.
  const onStop = new Set<() => void>();
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      if (stopped) return resolve();
      const wake = () => {
        clearTimeout(timer);
        onStop.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      onStop.add(wake);
    });
  const all = () => (primary ? [primary, ...extras] : [...extras]);

  /** Dials the server; resolves `undefined` at once if the agent stops first (a late connection is closed). */
  const dial = async (): Promise<QuicConnection | undefined> => {
    if (stopped) return undefined;
    const attempt = options.engine.connect({
      host: options.server.host,
      port: options.server.port,
      serverName: options.serverName,
      tls: options.tls(),
      transport: options.transport,
    });
    const connection = await new Promise<QuicConnection | undefined>((resolve, reject) => {
      const stop = () => resolve(undefined);
      onStop.add(stop);
      attempt.then(resolve, reject).finally(() => onStop.delete(stop));
    });
    if (connection && !stopped) return connection;
    attempt.then(
      (late) => late.close(0, "agent stopping"),
      () => {},
    );
    return undefined;
  };

  /**
   * Serves the streams of `connection` and tells the server what kind of agent this is; resolves
   * with the server's answer once it came, or did not in time. Dials more connections when the
   * open ones fill up.
   */
  async function serve(connection: QuicConnection): Promise<Announcement> {
    const announcing = announceAgent(connection, { kind: options.kind, timeoutMs: HELLO_TIMEOUT_MS });
    const server: ServerInfo = {
      listeners: undefined,
      host: parseHostPort(connection.peer)?.host ?? connection.peer,
      announced: announcing.then((announcement) => {
        server.listeners = announcement.listeners;
      }),
    };
    connection.on("stream", (stream) => {
      onStream(stream, server);
      scale(connection.incomingStreamLimit);
    });
    return announcing;
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
      if (!connection) return;
      extras.add(connection);
      let idleSince = Date.now();
      const idleCheck = setInterval(() => {
        if (connection.streamCount > 0) idleSince = Date.now();
        else if (Date.now() - idleSince >= EXTRA_IDLE_MS) connection.close(0, "idle extra connection");
      }, 1000);
      idleCheck.unref?.();
      connection.once("close", () => {
        clearInterval(idleCheck);
        extras.delete(connection);
      });
      await serve(connection);
      log.info("opened connection {count} to server {server}: the others are half full", { server, count: all().length });
    } catch (err) {
      log.warn("cannot open another connection to server {server}: {error}", { server, error: err });
    } finally {
      dialing--;
    }
  }

  /**
   * Says why the server's certificate was refused, once per distinct failure: a TLS alert does not
   * tell whether the name, the issuer or the dates were wrong.
   */
  let explained = "";
  async function explainFailure(err: Error): Promise<void> {
    if (!/TLS alert|certificate/i.test(err.message) || err.message === explained) return;
    explained = err.message;
    try {
      const tls = options.tls();
      const certificate = await options.engine.peekCertificate({
        host: options.server.host,
        port: options.server.port,
        serverName: options.serverName,
        tls,
        transport: options.transport,
      });
      const explanation = certificate && explainServerCertificate(certificate, { serverName: options.serverName, ca: tls.ca });
      if (explanation) log.error("{explanation}", { server, explanation });
    } catch (diagnosis) {
      log.debug("could not look at the server's certificate: {error}", { server, error: diagnosis });
    }
  }

  async function loop(): Promise<void> {
    while (!stopped) {
      log.debug("dialing server {server}", { server });
      let connection: QuicConnection | undefined;
      try {
        connection = await dial();
      } catch (err) {
        const delay = backoff.next();
        log.warn("cannot connect to server {server}: {error}; retrying in {delay} ms", { server, error: err, delay });
        await explainFailure(err as Error);
        await sleep(delay);
        continue;
      }
      if (!connection) break;
      primary = connection;
      const closed = new Promise<QuicError | undefined>((resolve) => connection.once("close", resolve));
      const since = Date.now();
      // A server that refuses this agent (--agent-subject) drops the hello and closes the connection;
      // on node-quic the close arrives a few milliseconds after the stream's end. Connected is said
      // only of a connection that outlives that.
      if ((await serve(connection)).abandoned) await Promise.race([closed, sleep(HELLO_TIMEOUT_MS)]);
      if (!connection.closed) log.info("connected to server {server}", { server, subject: connection.peerSubject });
      const error = await closed;
      primary = undefined;
      if (stopped) break;
      if (Date.now() - since >= STABLE_AFTER_MS) backoff.reset();
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
        all().map((connection) =>
          sendGoAway(connection).catch((err) => log.warn("cannot tell the server to stop routing here: {error}", { error: err })),
        ),
      );
    },
    stop() {
      stopped = true;
      for (const connection of all()) connection.close(0, "agent stopping");
      for (const wake of onStop) wake();
      onStop.clear();
    },
    done: loop(),
  };
}

/** The connection options of an agent from its command line (see AGENT_FLAGS in lib/ops/cli.ts). */
export function connectionOptions(
  flags: FlagValues<typeof AGENT_FLAGS>,
  wiring: { kind: AgentKind; engine: QuicEngine; tls: () => TlsMaterial; log: Logger },
): AgentOptions {
  return {
    ...wiring,
    server: flags.server,
    serverName: flags["server-name"],
    transport: { ...transportOptions(flags), keepAliveMs: flags["keep-alive"] },
    backoff: { minMs: flags["reconnect-min"], maxMs: flags["reconnect-max"] },
    // Enough connections for --max-tunnels where a connection takes only 100 (node-quic).
    maxConnections: Math.min(100, Math.max(1, Math.ceil((flags["max-tunnels"] || 10_000) / 100))),
  };
}

/** Registers the agent's connection series: connected, how many connections, their QUIC paths. */
export function registerConnectionMetrics(registry: Registry, agent: AgentHandle): void {
  new Gauge(registry, "quic_tunnel_server_connected", "1 while the agent is connected to the server.", () => [
    [{}, agent.connections.length > 0 ? 1 : 0],
  ]);
  new Gauge(registry, "quic_tunnel_server_connections", "QUIC connections to the server (more are opened under load).", () => [
    [{}, agent.connections.length],
  ]);
  registerQuicMetrics(registry, () => agent.connections);
}

/**
 * A graceful stop: tell the server (GOAWAY), let open tunnels finish for up to `graceMs` and what
 * they sent reach the server, then close the connections.
 */
export async function drainAgent(agent: AgentHandle, tunnels: Tunnels, options: { graceMs: number; log: Logger }): Promise<void> {
  const deadline = Date.now() + options.graceMs;
  await agent.goAway();
  if (await tunnels.whenIdle(options.graceMs)) {
    await settled(agent.connections, { timeoutMs: deadline - Date.now() });
  } else {
    options.log.warn("closing {count} tunnels still open after the grace period", { count: tunnels.count });
  }
  agent.stop();
  await agent.done;
}

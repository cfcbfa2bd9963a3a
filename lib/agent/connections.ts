/**
 * The agent's life: dial the server, serve the streams it opens, and when the connection ends dial
 * again after a capped, jittered exponential backoff. Shared by agent.ts and agent-tcp.ts.
 *
 * The connection goes over QUIC or the TCP transport as `--transport` says (lib/agent/
 * transport-choice.ts). An agent that fell back to TCP tries QUIC again now and then; once QUIC
 * connects, the TCP connection is told to take no new tunnels (GOAWAY) and closed when its last
 * one is done, so moving back cuts nothing.
 *
 * A connection takes only so many tunnels at once (`incomingStreamLimit`; 100 on the node-quic
 * engine, whose client cannot take more). When the open connections are half full, more are
 * dialed; an extra connection that has carried nothing for a while is closed again.
 *
 * Several server replicas may share the `--server` address (a load balancer, a DNS name). Our
 * server answers the hello with its id and how many replicas there are (`--server-count`): the
 * agent then keeps one seat per replica, each a connection of its own (its own UDP port, so that
 * a balancer hashing flows spreads them), and a seat whose connection lands on a server another
 * seat holds closes it and dials again after its backoff. The reference's server says nothing: one
 * seat per `--server` address (see {@link seatsWanted}).
 *
 * @module
 */

import { hostname } from "node:os";
import { type AgentIdentity, type AgentKind, type Announcement, introduceAgent, sendGoAway } from "../control.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../hostport.ts";
import { NO_IDENTIFIERS, parseIdentifiers } from "../identifiers.ts";
import { type AGENT_FLAGS, transportOptions } from "../ops/cli.ts";
import type { FlagValues } from "../ops/flags.ts";
import type { Logger } from "../ops/log.ts";
import { Gauge, type Registry } from "../ops/metrics.ts";
import { registerQuicMetrics } from "../ops/quic-metrics.ts";
import { STREAM_OPENED_FEATURE } from "../protocol.ts";
import {
  type QuicConnection,
  type QuicEngine,
  type QuicError,
  type QuicStream,
  settled,
  type TlsMaterial,
  type TransportOptions,
} from "../transport/mod.ts";
import { tcpEngine } from "../transport/tcp/mod.ts";
import { proxyFor } from "../transport/tcp/proxy.ts";
import type { Tunnels } from "../tunnel/slots.ts";
import { ServerAddresses } from "./addresses.ts";
import { type BackoffOptions, RedialBackoff } from "./backoff.ts";
import { explainServerCertificate } from "./diagnose.ts";
import type { ServerInfo } from "./loop-guard.ts";
import { type Route, TransportChoice, type TransportMode } from "./transport-choice.ts";

/**
 * How many servers an agent holds a connection to (before the {@link MAX_SERVERS} cap): one per
 * replica the servers announce and one per `--server` entry; while servers name none (the
 * reference's), one per address the entries resolve to. Once they name themselves, a name's several
 * addresses (dual stack, a balancer in several zones) are only places to dial: seats for them could
 * find nothing but duplicates.
 */
export function seatsWanted(state: { identified: boolean; announced: number; given: number; resolved: number }): number {
  return Math.max(state.announced, state.identified ? state.given : state.resolved);
}

/** One connection the agent keeps up with reconnects, and the server (by id) it reached. */
interface Seat {
  readonly index: number;
  /** While its loop runs. */
  running: boolean;
  /** The QUIC address the seat dials now (one of `--server`'s). */
  address?: HostPort;
  connection?: QuicConnection;
  route?: Route;
  serverId?: string;
}

/** Options for {@link runAgent}. */
export interface AgentOptions {
  /** What clients of this agent speak, told to the server as each connection starts. */
  kind: AgentKind;
  /** Who this agent is and what it reaches, told to the server as each connection starts (when given). */
  identity?: AgentIdentity;
  /** What this agent asks of the server's streams (`FEATURES`, lib/control.ts), told as each connection starts. */
  features?: readonly string[];
  /** The ways to the server, and which to take. */
  transports: TransportChoice;
  /** The QUIC addresses of the server (`--server`), where seats dial. */
  addresses: ServerAddresses;
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
  /** Distinct servers (by id) connected now, and how many the agent means to hold ({@link seatsWanted}). */
  readonly servers: { connected: number; wanted: number };
  /** The transport of the first connection (`quic` or `tcp`), while there is one. */
  readonly transport: Route["name"] | undefined;
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
/** Server replicas an agent holds connections to at most, whatever `--server-count` says. */
const MAX_SERVERS = 16;
/** How often a connection left for another transport is checked for its last tunnel. */
const RETIRE_CHECK_MS = 1_000;
/** A retired connection whose GOAWAY cannot be sent this many times running is closed. */
const RETIRE_GOAWAY_TRIES = 30;

/**
 * Keeps a QUIC connection to the server up for as long as the process runs (and more while the
 * load needs them), handing every stream the server opens to `onStream`. Each stream is served on
 * its own, so a slow one blocks nothing.
 */
export function runAgent(options: AgentOptions, onStream: (stream: QuicStream, server: ServerInfo) => void): AgentHandle {
  const { log, transports } = options;
  const named = (route: Route) => formatHostPort(route.server);
  /** What logs say of a route beside its address. */
  const over = (route: Route) => ({ transport: route.name, proxy: route.proxy?.host });
  let server = named(transports.routes()[0]);
  const maxConnections = options.maxConnections ?? 1;
  let stopped = false;
  /**
   * The connections kept up with reconnects: one per server replica. The first seat's route is
   * the agent's transport; extras dial a connected seat's route, to the address it dialed.
   */
  const seats: Seat[] = [];
  /** The replicas the servers announced last (1 for servers that say none). */
  let announced = 1;
  /** Whether servers name themselves: then seats follow their count, and addresses are where to dial. */
  let identified = false;
  /** After goAway(): no new connections, none redialed. */
  let draining = false;
  /** Seats to hold: {@link seatsWanted}, at most {@link MAX_SERVERS}. */
  let wanted = 1;
  const seated = () => seats.flatMap((seat) => (seat.connection ? [seat.connection] : []));
  /** Connections dialed under load beside the seats, by the route each took (a seat's). */
  const extras = new Map<QuicConnection, Route>();
  /** Connections left for QUIC or found to duplicate another seat's, closing once their last tunnel is done. */
  const retiring = new Set<QuicConnection>();
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
  /** The connections that take new tunnels, the first first. */
  const serving = () => [...seated(), ...extras.keys()];
  /** Every open connection: those serving, then those retiring. */
  const all = () => [...serving(), ...retiring];

  /** Dials the server over `route`; resolves `undefined` at once if the agent stops first (a late connection is closed). */
  const dialOver = async (route: Route): Promise<QuicConnection | undefined> => {
    if (stopped) return undefined;
    const attempt = route.engine.connect({
      host: route.server.host,
      port: route.server.port,
      serverName: options.serverName,
      tls: options.tls(),
      transport: options.transport,
      proxy: route.proxy,
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
   * Dials a seat's connection over the preferred route and, with `--transport auto`, over the
   * other when that fails; the route that worked is preferred from then on. Each route goes to the
   * seat's address of the moment where it can ({@link seatRoute}), and that is the route it
   * resolves with. Rejects with the last route's error.
   */
  const dial = async (seat: Seat): Promise<{ connection: QuicConnection; route: Route } | undefined> => {
    const routes = transports.routes();
    for (const [index, route] of routes.entries()) {
      try {
        const dialed = seatRoute(route, seat);
        const connection = await dialOver(dialed);
        if (!connection) return undefined;
        transports.connected(route);
        return { connection, route: dialed };
      } catch (err) {
        await explainFailure(route, err as Error);
        if (index === routes.length - 1) throw err;
        log.warn("cannot connect to server {server} over {transport}: {error}; trying {next}", {
          server: named(route),
          error: err,
          transport: route.name,
          next: `${named(routes[index + 1])} over ${routes[index + 1].name}`,
        });
      }
    }
    return undefined;
  };

  /**
   * Serves the streams of `connection` and tells the server what kind of agent this is; resolves
   * with the server's answer once it came, or did not in time. Dials more connections when the
   * open ones fill up.
   */
  async function serve(connection: QuicConnection): Promise<Announcement> {
    const announcing = introduceAgent(connection, {
      kind: options.kind,
      identity: options.identity,
      features: options.features,
      timeoutMs: HELLO_TIMEOUT_MS,
    });
    const server: ServerInfo = {
      listeners: undefined,
      host: parseHostPort(connection.peer)?.host ?? connection.peer,
      announced: announcing.then((announcement) => {
        server.listeners = announcement.listeners;
        void announcement.late?.then((late) => {
          if (late.listeners) server.listeners = late.listeners;
        });
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
    if (draining) return;
    const connections = serving();
    const used = connections.reduce((sum, c) => sum + c.streamCount, 0);
    const needed = Math.min(maxConnections, Math.ceil((used + 1) / (SCALE_AT * perConnection)));
    for (let count = connections.length + dialing; count < needed && !stopped; count++) void dialExtra();
  }

  /** Dials one more connection over a connected seat's route: only seats choose the transport. */
  async function dialExtra(): Promise<void> {
    const route = seats.find((seat) => seat.connection && seat.route)?.route;
    if (!route) return;
    dialing++;
    try {
      const connection = await dialOver(route);
      if (!connection) return;
      extras.set(connection, route);
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
      log.info("opened connection {count} to server {server}: the others are half full", { server, count: serving().length });
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
  async function explainFailure(route: Route, err: Error): Promise<void> {
    if (!/TLS alert|certificate/i.test(err.message) || err.message === explained) return;
    explained = err.message;
    try {
      const tls = options.tls();
      const certificate = await route.engine.peekCertificate({
        host: route.server.host,
        port: route.server.port,
        serverName: options.serverName,
        tls,
        transport: options.transport,
        proxy: route.proxy,
      });
      const explanation = certificate && explainServerCertificate(certificate, { serverName: options.serverName, ca: tls.ca });
      if (explanation) log.error("{explanation}", { server: named(route), explanation });
    } catch (diagnosis) {
      log.debug("could not look at the server's certificate: {error}", { server, error: diagnosis });
    }
  }

  /**
   * While `connection` (over TCP, `--transport auto`) holds `seat`, tries QUIC every so often; once
   * QUIC connects, it takes the seat and `moved` is called with it, and the TCP connection takes
   * no new tunnels and closes after its last one.
   */
  async function probeQuic(seat: Seat, connection: QuicConnection, moved: (quic: QuicConnection) => void): Promise<void> {
    while (!stopped && seat.connection === connection && !connection.closed) {
      await sleep(transports.probeDelay());
      if (stopped || seat.connection !== connection || connection.closed) return;
      let quic: QuicConnection | undefined;
      try {
        quic = await dialOver(seatRoute(transports.quic, seat));
      } catch (err) {
        log.debug("QUIC to server {server} still fails: {error}", { server: named(seatRoute(transports.quic, seat)), error: err });
        continue;
      }
      if (!quic) return;
      if (seat.connection !== connection || connection.closed) return quic.close(0, "not needed");
      transports.connected(transports.quic);
      moved(quic);
      retire(connection, "agent moved to another transport");
      for (const [extra, route] of extras) if (route.name === "tcp") retire(extra, "agent moved to another transport");
      return;
    }
  }

  /**
   * Asks the server to route nothing new over `connection`, and closes it once its tunnels are
   * done. Its tunnels may take as long as they need; a GOAWAY that cannot be sent is tried again
   * each check, and a connection that cannot take one for {@link RETIRE_GOAWAY_TRIES} checks is
   * closed, since the server would go on routing new tunnels over it.
   */
  function retire(connection: QuicConnection, reason: string): void {
    extras.delete(connection);
    if (connection.closed) return;
    retiring.add(connection);
    let goAway: "unsent" | "sending" | "sent" = "unsent";
    let failures = 0;
    const tell = () => {
      goAway = "sending";
      sendGoAway(connection).then(
        () => {
          goAway = "sent";
        },
        (err: Error) => {
          goAway = "unsent";
          if (++failures < RETIRE_GOAWAY_TRIES) return;
          log.warn("cannot tell server {server} to stop routing over the old connection: {error}; closing it", { server, error: err });
          connection.close(0, reason);
        },
      );
    };
    tell();
    const check = setInterval(() => {
      if (connection.closed) return;
      if (goAway === "unsent") tell();
      else if (goAway === "sent" && connection.streamCount === 0) connection.close(0, reason);
    }, RETIRE_CHECK_MS);
    check.unref?.();
    connection.once("close", () => {
      clearInterval(check);
      retiring.delete(connection);
    });
  }

  /** `route` to the address `seat` dials, where it can go there (the route as given until the seat has one). */
  const seatRoute = (route: Route, seat: Seat): Route => (seat.address && route.at ? route.at(seat.address) : route);

  /** Another seat's connection to server `id`, if one holds it. */
  const holder = (seat: Seat, id: string) => seats.find((other) => other !== seat && other.serverId === id && other.connection);

  /** Follows the replica count a server announced: seats are taken or given up to match. */
  function countServers(answer: Announcement): void {
    if (!answer.server || (identified && answer.server.count === announced)) return;
    [identified, announced] = [true, answer.server.count];
    want();
  }

  /** Holds {@link seatsWanted} seats; seats beyond a smaller count give their connections up. */
  function want(): void {
    const count = seatsWanted({ identified, announced, given: options.addresses.given, resolved: options.addresses.size });
    if (count > MAX_SERVERS && wanted < MAX_SERVERS) log.warn("{count} servers to connect to; holding {max}", { count, max: MAX_SERVERS });
    wanted = Math.min(count, MAX_SERVERS);
    for (const seat of seats.slice(wanted)) if (seat.connection) retire(seat.connection, "agent holds fewer servers now");
    for (let index = 0; index < wanted && !stopped && !draining; index++) {
      if (!seats[index]) seats.push({ index, running: false });
      if (!seats[index].running) seatLoops.push(keepSeat(seats[index]));
    }
  }

  const seatLoops: Promise<void>[] = [];

  /** Keeps `seat` connected, to a server no other seat holds, until the agent stops. */
  async function keepSeat(seat: Seat): Promise<void> {
    seat.running = true;
    const backoff = new RedialBackoff(options.backoff);
    // Failed and duplicate dials move the seat on to the next address.
    let attempt = 0;
    while (!stopped && !draining && seat.index < wanted) {
      seat.address = options.addresses.pick(seat.index, attempt);
      const target = named(seatRoute(transports.routes()[0], seat));
      log.debug("dialing server {server}", { server: target });
      let dialed: Awaited<ReturnType<typeof dial>>;
      try {
        dialed = await dial(seat);
      } catch (err) {
        attempt++;
        const delay = backoff.failed();
        log.warn("cannot connect to server {server}: {error}; retrying in {delay} ms", { server: target, error: err, delay });
        await sleep(delay);
        continue;
      }
      if (!dialed) break;
      let { connection, route } = dialed;
      const where = named(route);
      if (seat.index === 0) server = where;
      [seat.connection, seat.route] = [connection, route];
      const since = Date.now();
      // Listened for at once: the close may come before the hello is answered.
      const closedOnce = (c: QuicConnection) => new Promise<QuicError | undefined>((resolve) => c.once("close", resolve));
      let closed = closedOnce(connection);
      // A server that refuses this agent (--agent-subject) drops the hello and closes the connection;
      // on node-quic the close arrives a few milliseconds after the stream's end. Connected is said
      // only of a connection that outlives that.
      const announcement = await serve(connection);
      if (announcement.abandoned) await Promise.race([closed, sleep(HELLO_TIMEOUT_MS)]);
      /** Leaves a connection that reached server `id`, which another seat holds; dials again after the backoff. */
      const leaveDuplicate = async (id: string) => {
        // The balancer sent this flow to a server another seat holds: dial again, from a new port.
        // The server may have routed a tunnel here already: it finishes before the close.
        [seat.connection, seat.serverId, seat.route] = [undefined, undefined, undefined];
        retire(connection, `agent already connected to server ${id}`);
        attempt++;
        const delay = backoff.duplicate();
        log.debug("connection to server {server} reached server id {id}, which another connection holds; dialing again in {delay} ms", {
          server: where,
          id,
          delay,
        });
        await sleep(delay);
      };
      const id = announcement.server?.id;
      if (id && holder(seat, id)) {
        await leaveDuplicate(id);
        continue;
      }
      seat.serverId = id;
      attempt = 0;
      backoff.connected();
      countServers(announcement);
      // An answer slower than the hello's timeout still names the server: a duplicate is left then.
      const first = connection;
      const duplicateOf = new Promise<string>((resolve) => {
        void announcement.late?.then((late) => {
          const lateId = late.server?.id;
          if (!lateId || seat.connection !== first) return;
          if (holder(seat, lateId)) return resolve(lateId);
          seat.serverId = lateId;
          countServers(late);
        });
      });
      if (!connection.closed) {
        log.info("connected to server {server}", { server: where, server_id: id, subject: connection.peerSubject, ...over(route) });
      }
      let error: QuicError | undefined;
      let duplicate = false;
      for (;;) {
        let onMove: (quic: QuicConnection) => void = () => {};
        const movedTo = new Promise<QuicConnection>((resolve) => {
          onMove = resolve;
        });
        if (transports.probes(route)) void probeQuic(seat, connection, onMove);
        const outcome = await Promise.race([
          closed.then((closeError) => ({ closeError })),
          movedTo.then((quic) => ({ quic })),
          duplicateOf.then((duplicate) => ({ duplicate })),
        ]);
        if ("duplicate" in outcome) {
          duplicate = true;
          await leaveDuplicate(outcome.duplicate);
          break;
        }
        if (!("quic" in outcome)) {
          error = outcome.closeError;
          break;
        }
        [connection, route] = [outcome.quic, seatRoute(transports.quic, seat)];
        [seat.connection, seat.route] = [connection, route];
        closed = closedOnce(connection);
        if (seat.index === 0) server = named(route);
        seat.serverId = (await serve(connection)).server?.id;
        log.info("moved to QUIC: connected to server {server}; the TCP connection closes after its last tunnel", {
          server,
          server_id: seat.serverId,
          transport: route.name,
        });
      }
      if (duplicate) continue;
      [seat.connection, seat.serverId, seat.route] = [undefined, undefined, undefined];
      if (stopped) break;
      if (Date.now() - since >= STABLE_AFTER_MS) backoff.lasted();
      const delay = backoff.failed();
      log.warn("connection to server {server} lost: {reason}; reconnecting in {delay} ms", {
        server: where,
        server_id: id,
        reason: error?.message ?? "closed",
        delay,
      });
      await sleep(delay);
    }
    seat.running = false;
  }

  /** Runs the seats until the agent stops; seats taken meanwhile are awaited too. */
  async function run(): Promise<void> {
    await options.addresses.start(want);
    want();
    for (let done = 0; done < seatLoops.length; done++) await seatLoops[done];
    options.addresses.stop();
    log.info("agent stopped");
  }

  return {
    get connections() {
      return all();
    },
    get transport() {
      return seats[0]?.route?.name;
    },
    get servers() {
      // A server that names no id (the reference's) counts once for each connection to it.
      const connected = seats.filter((seat) => seat.connection).map((seat) => seat.serverId ?? `seat ${seat.index}`);
      return { connected: new Set(connected).size, wanted };
    },
    async goAway() {
      draining = true;
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
    done: run(),
  };
}

/** The connection options of an agent from its command line (see AGENT_FLAGS in lib/ops/cli.ts). */
export function connectionOptions(
  flags: FlagValues<typeof AGENT_FLAGS>,
  wiring: { kind: AgentKind; engine: QuicEngine; tls: () => TlsMaterial; log: Logger },
): AgentOptions {
  const { engine, ...rest } = wiring;
  const mode = flags.transport as TransportMode;
  const named = flags["agent-id"] || flags["agent-identifiers"];
  const quic = (server: HostPort): Route => ({ name: "quic", engine, server, at: quic });
  // Without --server-tcp, TCP goes where QUIC would: each seat to its own --server address.
  const tcp = (server: HostPort, at?: (server: HostPort) => Route): Route => ({
    name: "tcp",
    engine: tcpEngine,
    server,
    proxy: mode === "quic" ? undefined : proxyFor(server, { flag: flags.proxy }),
    at,
  });
  const tcpFollowing = (server: HostPort): Route => tcp(server, tcpFollowing);
  const fixedTcp = flags["server-tcp"] as HostPort | undefined;
  return {
    ...rest,
    transports: new TransportChoice({
      mode,
      quic: quic(flags.server[0]),
      tcp: fixedTcp ? tcp(fixedTcp) : tcpFollowing(flags.server[0]),
      probeMs: flags["transport-probe"],
    }),
    // A passthrough agent must learn of a stream before its client speaks (lib/protocol.ts).
    features: wiring.kind === "passthrough" ? [STREAM_OPENED_FEATURE] : undefined,
    identity: named
      ? {
          id: flags["agent-id"] || hostId(),
          identifiers: flags["agent-identifiers"] ? parseIdentifiers(flags["agent-identifiers"]) : NO_IDENTIFIERS,
        }
      : undefined,
    addresses: new ServerAddresses(flags.server),
    serverName: flags["server-name"],
    transport: { ...transportOptions(flags), keepAliveMs: flags["keep-alive"] },
    backoff: { minMs: flags["reconnect-min"], maxMs: flags["reconnect-max"] },
    // Enough connections for --max-tunnels where a connection takes only 100 (node-quic).
    maxConnections: Math.min(100, Math.max(1, Math.ceil((flags["max-tunnels"] || 10_000) / 100))),
  };
}

/** This host's name as an agent id: what ID_PATTERN allows of it. */
function hostId(): string {
  return (
    hostname()
      .replace(/[^A-Za-z0-9._-]/g, "-")
      .slice(0, 64) || "agent"
  );
}

/** Registers the agent's connection series: connected, how many connections, their QUIC paths. */
export function registerConnectionMetrics(registry: Registry, agent: AgentHandle): void {
  new Gauge(registry, "quic_tunnel_server_connected", "1 while the agent is connected to the server.", () => [
    [{}, agent.connections.length > 0 ? 1 : 0],
  ]);
  new Gauge(registry, "quic_tunnel_server_connections", "QUIC connections to the server (more are opened under load).", () => [
    [{}, agent.connections.length],
  ]);
  new Gauge(registry, "quic_tunnel_server_transport", "1 for the transport the agent's first connection uses (quic or tcp).", () =>
    agent.transport ? [[{ transport: agent.transport }, 1]] : [],
  );
  new Gauge(registry, "quic_tunnel_servers_connected", "Distinct server replicas (by server id) the agent is connected to.", () => [
    [{}, agent.servers.connected],
  ]);
  new Gauge(
    registry,
    "quic_tunnel_servers_wanted",
    "Servers the agent means to hold: the replicas they announce (--server-count), else one per --server address; at most 16.",
    () => [[{}, agent.servers.wanted]],
  );
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

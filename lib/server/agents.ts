/**
 * The server's agents: which connections may carry tunnels (identity), what their clients speak
 * (their hello on the control stream), who is draining (GOAWAY), and the round-robin pool that
 * hands out streams. Rejections are counted and logged at a bounded rate.
 *
 * @module
 */
import type { X509Certificate } from "node:crypto";
import { type AgentIdentity, type AgentKind, type ServerIdentity, serveControlStream } from "../control.ts";
import type { HostPort } from "../hostport.ts";
import { destination, formatIdentifiers, NO_IDENTIFIERS } from "../identifiers.ts";
import { type Logger, LogThrottle } from "../ops/log.ts";
import { Counter, Gauge, type Registry } from "../ops/metrics.ts";
import { AGENT_NOT_ALLOWED } from "../protocol.ts";
import type { QuicConnection, QuicStream } from "../transport/mod.ts";
import { AgentPool } from "./agent-pool.ts";
import { allows, type Strategy } from "./strategies.ts";

/**
 * How long a new agent connection gets to say what kind of agent it is before it takes tunnels as
 * a CONNECT agent (the reference's agents never say). As long as our agents wait for the answer:
 * a hello delayed by a long or lossy path must not make an agent-tcp a CONNECT agent.
 */
const HELLO_WAIT_MS = 1_000;

/** How long an agent that left a CONNECT unanswered takes new tunnels only when no other agent can. */
const UNANSWERED_PENALTY_MS = 60_000;

/** Options of {@link Agents}. */
export interface AgentsOptions {
  log: Logger;
  registry: Registry;
  /** `--agent-subject`: names an agent certificate's CN or a SAN must equal (none: any). */
  subjects: readonly string[];
  /** `--passthrough`: clients speak to passthrough agents whatever the agents say. */
  passthrough: boolean;
  /** The server's client listeners, told to our agents so they can refuse loops. */
  listeners: () => readonly HostPort[];
  /** Which replica this server is, of how many: our agents hold a connection to each. */
  identity: ServerIdentity;
  /** `--proxy-strategies`: how the agent for a CONNECT is picked, in order. */
  strategies: readonly Strategy[];
}

/** An agent to carry a tunnel, or why there is none. */
export type AgentChoice =
  | { stream: QuicStream; agent: QuicConnection; strategy: Strategy }
  | { stream: undefined; reason: string; strategy?: Strategy };

/** True when `subjects` is empty, or the certificate's CN or a SAN is one of them. */
function identityAllowed(certificate: X509Certificate | undefined, subjects: readonly string[]): boolean {
  if (subjects.length === 0) return true;
  if (!certificate) return false;
  const names = [
    ...certificate.subject.split("\n").flatMap((part) => (part.startsWith("CN=") ? [part.slice(3)] : [])),
    ...(certificate.subjectAltName ?? "").split(", ").map((entry) => entry.replace(/^[A-Za-z ]+:/, "")),
  ];
  return names.some((name) => subjects.includes(name));
}

/** The connected agents of a server. */
export class Agents {
  readonly #options: AgentsOptions;
  readonly #pool = new AgentPool<QuicConnection, QuicStream>();
  readonly #kinds = new Map<QuicConnection, AgentKind | "unknown">();
  readonly #identities = new Map<QuicConnection, AgentIdentity>();
  readonly #features = new Map<QuicConnection, readonly string[]>();
  readonly #chosen: Counter;
  readonly #rejected: Counter;
  readonly #unanswered: Counter;
  readonly #rejectedLog = new LogThrottle({ limit: 10, windowMs: 10_000 });
  #mixedWarned = false;

  constructor(options: AgentsOptions) {
    this.#options = options;
    const { registry } = options;
    this.#rejected = new Counter(registry, "quic_tunnel_agents_rejected_total", "Agent connections refused (certificate, identity).");
    this.#rejected.inc({}, 0);
    this.#unanswered = new Counter(
      registry,
      "quic_tunnel_agent_answer_timeouts_total",
      "CONNECTs an agent did not answer within --agent-answer-timeout.",
    );
    this.#unanswered.inc({}, 0);
    this.#chosen = new Counter(
      registry,
      "quic_tunnel_strategy_dials_total",
      "Tunnels by the --proxy-strategies entry that chose their agent.",
    );
    for (const strategy of options.strategies) this.#chosen.inc({ strategy }, 0);
    new Gauge(registry, "quic_tunnel_agents_connected", "Agent connections taking tunnels.", () => [[{}, this.#pool.size]]);
    new Gauge(registry, "quic_tunnel_agent_info", "Connected agents by address and certificate subject (value 1).", () =>
      this.#pool.agents.map((agent) => [{ peer: agent.peer, subject: agent.peerSubject }, 1]),
    );
  }

  /** Agent connections taking tunnels. */
  get size(): number {
    return this.#pool.size;
  }

  /** The connections taking tunnels. */
  get connections(): readonly QuicConnection[] {
    return this.#pool.agents;
  }

  /** True when clients speak to passthrough agents: raw bytes, no CONNECT head to read. */
  get passthrough(): boolean {
    if (this.#options.passthrough) return true;
    const kinds = new Set(this.#pool.agents.map((agent) => this.#kinds.get(agent)));
    if (kinds.size > 1 && kinds.has("passthrough") && !this.#mixedWarned) {
      this.#mixedWarned = true;
      this.#options.log.warn("passthrough and CONNECT agents are connected at once; clients are read as HTTP CONNECT");
    }
    return kinds.size === 1 && kinds.has("passthrough");
  }

  /** Counts and logs (at a bounded rate) an agent that was refused. */
  rejected(peer: string, reason: string): void {
    const { log } = this.#options;
    this.#rejected.inc();
    if (this.#rejectedLog.allow((count) => log.warn("{count} more rejected agents were not logged", { count }))) {
      log.warn("rejected agent {peer}: {reason}", { peer, reason });
    }
  }

  /**
   * Takes a new agent connection: checks its identity, serves the streams it opens (hello, GOAWAY),
   * and lets it carry tunnels once it said what kind it is, or after a moment if it says nothing.
   */
  admit(agent: QuicConnection): void {
    const { log, subjects } = this.#options;
    if (!identityAllowed(agent.peerCertificate, subjects)) {
      this.rejected(agent.peer, `certificate ${agent.peerSubject} is not among --agent-subject`);
      agent.close(AGENT_NOT_ALLOWED, "agent identity not allowed");
      return;
    }
    let joined = false;
    let leaving = false;
    const join = () => {
      if (joined || leaving || agent.closed) return;
      joined = true;
      this.#pool.add(agent);
      log.info("agent {peer} connected", {
        peer: agent.peer,
        subject: agent.peerSubject,
        kind: this.#kinds.get(agent),
        agents: this.#pool.size,
      });
    };
    this.#kinds.set(agent, "unknown");
    agent.on("moved", (address) =>
      log.info("agent {peer} moved to {address}: a NAT rebound, or its address changed", { peer: agent.peer, address }),
    );
    const timer = setTimeout(join, HELLO_WAIT_MS);
    agent.on("stream", async (stream) => {
      const message = await serveControlStream(stream, this.#options);
      if (message?.type === "hello") {
        this.#kinds.set(agent, message.kind);
        clearTimeout(timer);
        join();
      } else if (message?.type === "identify") {
        this.#identities.set(agent, message);
        log.info("agent {peer} is {id}", { peer: agent.peer, id: message.id, identifiers: formatIdentifiers(message.identifiers) });
      } else if (message?.type === "features") {
        this.#features.set(agent, message.features);
      } else if (message?.type === "goaway") {
        // Before it joined too: an agent stopping right after it connected never takes tunnels.
        leaving = true;
        clearTimeout(timer);
        this.#pool.remove(agent);
        log.info("agent {peer} is draining; no new tunnels go to it", { peer: agent.peer, agents: this.#pool.size });
      }
    });
    agent.once("close", (error) => {
      clearTimeout(timer);
      this.#kinds.delete(agent);
      this.#identities.delete(agent);
      this.#features.delete(agent);
      if (!joined) return;
      this.#pool.remove(agent);
      log.info("agent {peer} disconnected: {reason}", { peer: agent.peer, reason: error?.message ?? "closed", agents: this.#pool.size });
    });
  }

  /**
   * Opens a stream for a CONNECT to `host` (undefined for passthrough clients, whose target is the
   * agent's) on an agent the first strategy that finds one allows, round-robin among those,
   * waiting up to `waitMs` for room.
   */
  async openStream(options: { waitMs: number; host?: string }): Promise<AgentChoice> {
    if (this.#pool.size === 0) return { stream: undefined, reason: "no agent is connected to the tunnel server" };
    const target = options.host === undefined ? undefined : destination(options.host);
    for (const strategy of this.#options.strategies) {
      const accept = (agent: QuicConnection) => allows(strategy, this.#identities.get(agent)?.identifiers ?? NO_IDENTIFIERS, target);
      if (!this.#pool.agents.some(accept)) continue;
      const opened = await this.#pool.openStream({ waitMs: options.waitMs, accept });
      if (opened.stream === undefined) {
        return { stream: undefined, strategy, reason: `no agent can take a stream: ${opened.errors.map((err) => err.message).join("; ")}` };
      }
      this.#chosen.inc({ strategy });
      return { ...opened, strategy };
    }
    return {
      stream: undefined,
      reason: `no connected agent serves ${options.host ?? "this client"} by --proxy-strategies ${this.#options.strategies.join(",")}`,
    };
  }

  /** Whether `agent` asked for `feature` of the streams to it (`FEATURES`, lib/control.ts). */
  asked(agent: QuicConnection, feature: string): boolean {
    return this.#features.get(agent)?.includes(feature) ?? false;
  }

  /**
   * `agent` did not answer a CONNECT within `timeoutMs`: it is counted, logged, and for a minute
   * takes new tunnels only when no other agent can.
   */
  unanswered(agent: QuicConnection, timeoutMs: number): void {
    this.#unanswered.inc({});
    this.#pool.penalize(agent, UNANSWERED_PENALTY_MS);
    this.#options.log.warn(
      "agent {peer} did not answer a CONNECT within {timeoutMs} ms; other agents take new tunnels first for {penaltyMs} ms",
      {
        peer: agent.peer,
        timeoutMs,
        penaltyMs: UNANSWERED_PENALTY_MS,
      },
    );
  }

  /** A tunnel ended: streams waiting for room try again. */
  roomMade(): void {
    this.#pool.roomMade();
  }
}

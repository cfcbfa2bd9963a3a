/**
 * The server's set of connected agents, handing out streams round-robin. When every agent is at
 * its stream limit, a new stream waits (bounded) for room: an agent frees a stream or connects
 * (agents dial more connections as they fill up), rather than the client getting 503 at once.
 *
 * @module
 */

/** What the pool needs of an agent connection. */
export interface StreamOpener<S> {
  openStream(): Promise<S>;
}

/**
 * Round-robin over connected agents. An agent that cannot open a stream (stream limit, closing) is
 * skipped, so one saturated agent does not fail a client while another has room.
 */
export class AgentPool<A extends StreamOpener<S>, S = Awaited<ReturnType<A["openStream"]>>> {
  #agents: A[] = [];
  /** The same agents, for membership checks in constant time. */
  readonly #members = new Set<A>();
  #next = 0;
  #waiters = new Set<() => void>();
  /** Counts {@link roomMade} calls, so that room made during an attempt is not missed. */
  #roomEvents = 0;
  /** Agents that failed a tunnel lately, with when they may take tunnels first again. */
  #penalized = new Map<A, number>();

  /** Number of connected agents. */
  get size(): number {
    return this.#agents.length;
  }

  /** The connected agents, in round-robin order. */
  get agents(): readonly A[] {
    return this.#agents;
  }

  /** Adds an agent that completed its handshake. */
  add(agent: A): void {
    this.#agents.push(agent);
    this.#members.add(agent);
    this.roomMade();
  }

  /** Tells streams waiting for room to try again (a stream ended, an agent joined). */
  roomMade(): void {
    this.#roomEvents++;
    for (const wake of this.#waiters) wake();
    this.#waiters.clear();
  }

  /** Removes an agent whose connection ended; unknown agents are ignored. */
  remove(agent: A): void {
    if (!this.#members.delete(agent)) return;
    const index = this.#agents.indexOf(agent);
    this.#agents.splice(index, 1);
    this.#penalized.delete(agent);
    if (this.#next > index) this.#next--;
    if (this.#next >= this.#agents.length) this.#next = 0;
  }

  /**
   * `agent` failed a tunnel (it did not answer in time): for `ms`, it takes new tunnels only when
   * no other agent can.
   */
  penalize(agent: A, ms: number): void {
    if (this.#members.has(agent)) this.#penalized.set(agent, performance.now() + ms);
  }

  /**
   * Opens a stream on the next agent that can take one (of those `accept` takes, if given),
   * waiting up to `waitMs` for room when every such agent is at its limit. Returns `undefined`
   * with the errors of the last round when none could (or none is connected).
   */
  async openStream(
    options: { waitMs?: number; accept?: (agent: A) => boolean } = {},
  ): Promise<{ stream: S; agent: A } | { stream: undefined; errors: Error[] }> {
    const deadline = performance.now() + (options.waitMs ?? 0);
    const accept = options.accept ?? (() => true);
    for (;;) {
      const roomEvents = this.#roomEvents;
      const opened = await this.#tryEach(accept);
      if (opened.stream !== undefined || !this.#agents.some(accept)) return opened;
      const left = deadline - performance.now();
      if (left <= 0) return opened;
      if (roomEvents !== this.#roomEvents) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.#waiters.add(done);
      });
    }
  }

  async #tryEach(accept: (agent: A) => boolean): Promise<{ stream: S; agent: A } | { stream: undefined; errors: Error[] }> {
    const errors: Error[] = [];
    // Round-robin from #next over the agents of this moment (opening may await, and agents come
    // and go meanwhile), agents that failed lately last. Linear in the agents, with no per-agent
    // allocation: a server may hold thousands (one per node).
    const agents = this.#agents.slice();
    const start = this.#next;
    this.#next = agents.length > 0 ? (start + 1) % agents.length : 0;
    const now = performance.now();
    const penalized = (agent: A) => {
      const until = this.#penalized.get(agent);
      if (until === undefined || until > now) return until !== undefined;
      this.#penalized.delete(agent);
      return false;
    };
    for (const lastRound of [false, true]) {
      if (lastRound && this.#penalized.size === 0) break;
      for (let offset = 0; offset < agents.length; offset++) {
        const agent = agents[(start + offset) % agents.length];
        if (penalized(agent) !== lastRound || !this.#members.has(agent) || !accept(agent)) continue;
        try {
          return { stream: await agent.openStream(), agent };
        } catch (err) {
          errors.push(err as Error);
        }
      }
    }
    return { stream: undefined, errors };
  }
}

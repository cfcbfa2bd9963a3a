/**
 * The admin endpoint (`--admin-addr`): `/healthz` (the process answers), `/readyz` (the role can do
 * its job: the server has an agent, an agent is connected) and `/metrics` (Prometheus text).
 *
 * It shares the event loop with the tunnels, so however it is used it may cost them little: the
 * metrics text is rendered at most once a second and served from that, requests are answered at a
 * bounded rate (those beyond it wait their turn, a bounded number of them; the rest are told to come
 * back later, after a pause so that they cannot spin), and requests are small GETs or are refused.
 *
 * @module
 */
import http from "node:http";
import type net from "node:net";
import { formatHostPort, type HostPort } from "../hostport.ts";
import type { Logger } from "./log.ts";
import type { Registry } from "./metrics.ts";
import { registerProcessMetrics } from "./process-metrics.ts";

/** Options for {@link startAdmin}. */
export interface AdminOptions {
  registry: Registry;
  log: Logger;
  /** Returns `undefined` when ready, or the reason it is not. */
  notReady(): string | undefined;
  /** What `/readyz` adds when ready (an agent: which transport it is connected over). */
  readyDetail?(): string | undefined;
}

/** Limits of the admin endpoint; the defaults suit Prometheus and kubelet probes by a wide margin. */
export interface AdminLimits {
  /** A rendered `/metrics` text is served again for this long. */
  metricsCacheMs: number;
  /** Requests answered per second, on average. */
  ratePerSecond: number;
  /** Requests answered at once before the rate applies. */
  burst: number;
  /** Requests waiting for their turn; beyond it, 503. */
  maxWaiting: number;
  /** How long a request refused with 503 is held first, so that a client in a loop cannot spin. */
  refusalDelayMs: number;
}

/**
 * The defaults: a scrape every 15 s and a probe every 10 s are far below 100 requests a second,
 * which, answered from the cache, costs the tunnels about a hundredth of a core. A kubelet probe
 * behind 64 waiting requests is answered within its 1 s timeout.
 */
export const ADMIN_LIMITS: AdminLimits = { metricsCacheMs: 1_000, ratePerSecond: 100, burst: 20, maxWaiting: 64, refusalDelayMs: 1_000 };

/** Longest request target accepted (414 beyond). */
const MAX_URL_BYTES = 1024;
/** Longest request head accepted, where the runtime enforces it (431 beyond). */
const MAX_HEADER_BYTES = 8192;

/** Serves the requests handed to it at most `ratePerSecond` a second, in their order of arrival. */
class Pacer {
  readonly #limits: AdminLimits;
  readonly #waiting: Array<() => void> = [];
  #tokens: number;
  #refilled = performance.now();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(limits: AdminLimits) {
    this.#limits = limits;
    this.#tokens = limits.burst;
  }

  /** Runs `serve` now or in its turn; false (and nothing runs) when too many wait already. */
  admit(serve: () => void): boolean {
    this.#refill();
    if (this.#waiting.length === 0 && this.#tokens >= 1) {
      this.#tokens--;
      serve();
      return true;
    }
    if (this.#waiting.length >= this.#limits.maxWaiting) return false;
    this.#waiting.push(serve);
    this.#schedule();
    return true;
  }

  #refill(): void {
    const now = performance.now();
    this.#tokens = Math.min(this.#limits.burst, this.#tokens + ((now - this.#refilled) * this.#limits.ratePerSecond) / 1000);
    this.#refilled = now;
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    const wait = Math.max(1, ((1 - this.#tokens) * 1000) / this.#limits.ratePerSecond);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#refill();
      while (this.#waiting.length > 0 && this.#tokens >= 1) {
        this.#tokens--;
        this.#waiting.shift()?.();
      }
      if (this.#waiting.length > 0) this.#schedule();
    }, wait);
  }
}

/** The `/metrics` text, rendered again only once `maxAgeMs` have passed since the last render. */
function cachedRender(registry: Registry, maxAgeMs: number): () => Buffer {
  let body: Buffer | undefined;
  let renderedAt = 0;
  return () => {
    const now = performance.now();
    if (body === undefined || now - renderedAt >= maxAgeMs) {
      body = Buffer.from(registry.render());
      renderedAt = now;
    }
    return body;
  };
}

/**
 * Serves the admin endpoint on `address` and logs where; resolves with the bound port once
 * listening. Rejects with an Error naming the flag when it cannot listen; later errors (a full
 * descriptor table) are logged, and the endpoint stays.
 */
export function startAdmin(
  address: HostPort,
  options: AdminOptions,
  limits: AdminLimits = ADMIN_LIMITS,
): Promise<{ server: http.Server; port: number }> {
  registerProcessMetrics(options.registry);
  const metrics = cachedRender(options.registry, limits.metricsCacheMs);
  const pacer = new Pacer(limits);
  const answer = (
    exchange: { req: http.IncomingMessage; res: http.ServerResponse },
    status: number,
    body: string | Buffer,
    options: { type?: string; close?: boolean } = {},
  ) => {
    const { req, res } = exchange;
    // A request that waited for its turn may have lost its connection meanwhile.
    if (res.destroyed) return;
    const headers: http.OutgoingHttpHeaders = { "content-type": options.type ?? "text/plain", "content-length": Buffer.byteLength(body) };
    if (options.close) headers.connection = "close";
    res.writeHead(status, headers).end(req.method === "HEAD" ? undefined : body);
  };
  const serve = (exchange: { req: http.IncomingMessage; res: http.ServerResponse }) => {
    const path = (exchange.req.url ?? "/").split("?")[0];
    if (path === "/healthz") {
      answer(exchange, 200, "ok\n");
    } else if (path === "/readyz") {
      const reason = options.notReady();
      const detail = reason ? undefined : options.readyDetail?.();
      answer(exchange, reason ? 503 : 200, reason ? `not ready: ${reason}\n` : detail ? `ready: ${detail}\n` : "ready\n");
    } else if (path === "/metrics") {
      answer(exchange, 200, metrics(), { type: "text/plain; version=0.0.4; charset=utf-8" });
    } else {
      answer(exchange, 404, "not found: try /healthz, /readyz or /metrics\n");
    }
  };
  const server = http.createServer(
    { maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: 5_000, requestTimeout: 10_000, keepAliveTimeout: 5_000 },
    (req, res) => {
      const exchange = { req, res };
      // Refused before they cost anything more: what is not a small GET or HEAD. A body is never
      // read, so the connection closes after the answer.
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.setHeader("allow", "GET, HEAD");
        return answer(exchange, 405, "only GET and HEAD\n", { close: true });
      }
      if (req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined) {
        return answer(exchange, 413, "a request to the admin endpoint has no body\n", { close: true });
      }
      if ((req.url ?? "").length > MAX_URL_BYTES) return answer(exchange, 414, "request target too long\n", { close: true });
      if (!pacer.admit(() => serve(exchange))) {
        const refuse = () => answer(exchange, 503, "admin endpoint busy, try again later\n", { close: true });
        const timer = setTimeout(refuse, limits.refusalDelayMs);
        res.once("close", () => clearTimeout(timer));
      }
    },
  );
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(new Error(`cannot listen for --admin-addr on ${address.host}:${address.port}: ${err.message}`)));
    server.listen(address.port, address.host, () => {
      server.removeAllListeners("error");
      server.on("error", (err) => options.log.error("admin endpoint: {error}", { error: err }));
      const port = (server.address() as net.AddressInfo).port;
      options.log.info("admin endpoint on {address}", { address: formatHostPort({ host: address.host, port }) });
      resolve({ server, port });
    });
  });
}

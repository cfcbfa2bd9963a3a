/**
 * The admin endpoint (`--admin-addr`): `/healthz` (the process answers), `/readyz` (the role can do
 * its job: the server has an agent, an agent is connected) and `/metrics` (Prometheus text).
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
}

/**
 * Serves the admin endpoint on `address` and logs where; resolves with the bound port once
 * listening. Rejects with an Error naming the flag when it cannot listen; later errors (a full
 * descriptor table) are logged, and the endpoint stays.
 */
export function startAdmin(address: HostPort, options: AdminOptions): Promise<{ server: http.Server; port: number }> {
  registerProcessMetrics(options.registry);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
    } else if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      const reason = options.notReady();
      res.writeHead(reason ? 503 : 200, { "content-type": "text/plain" }).end(reason ? `not ready: ${reason}\n` : "ready\n");
    } else if (path === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(options.registry.render());
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /healthz, /readyz or /metrics\n");
    }
  });
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

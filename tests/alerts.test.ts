/**
 * deploy/prometheus/alerts.yaml names only metrics the roles export: a rule on a metric that does
 * not exist never fires, and nobody notices.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import { adminGet, parseMetrics, ROOT, type RoleProcess, SLOW_TRANSPORT, scratchCerts, startAgent, startServer } from "./harness.ts";
import { until } from "./wait.ts";

const track = trackProcesses();

/** The metric names a role exports, without histogram suffixes or labels. */
async function exported(role: RoleProcess): Promise<Set<string>> {
  const port = Number((await role.waitFor(/admin endpoint on \S+:(\d+)/))[1]);
  const metrics = parseMetrics((await adminGet(port, "/metrics")).body);
  return new Set([...metrics.keys()].map((series) => series.replace(/\{.*$/, "").replace(/_(bucket|sum|count)$/, "")));
}

test("every metric the alert rules name is exported by a server or an agent", { skip: SLOW_TRANSPORT }, async () => {
  const rules = readFileSync(join(ROOT, "deploy", "prometheus", "alerts.yaml"), "utf8");
  const named = new Set([...rules.matchAll(/\bquic_tunnel_[a-z_]+/g)].map((match) => match[0]));
  assert.ok(named.size >= 6, `the rules name metrics (${[...named].join(", ")})`);
  const certs = scratchCerts();
  // A TLS listener for clients, so that its handshake-failure series exists too.
  const server = track(
    await startServer({
      certs,
      engine: "quiche",
      args: ["--admin-addr", "127.0.0.1:0", "--tcp-cert-file", certs.serverCert, "--tcp-cert-key", certs.serverKey],
    }),
  );
  const agent = track(await startAgent(server.quicPort, { certs, args: ["--admin-addr", "127.0.0.1:0"] }));
  const names = await until(
    async () => {
      const all = new Set([...(await exported(server)), ...(await exported(agent))]);
      return [...named].every((name) => all.has(name)) ? all : undefined;
    },
    () => "every metric the rules name",
  ).catch(async () => new Set([...(await exported(server)), ...(await exported(agent))]));
  assert.deepEqual(
    [...named].filter((name) => !names.has(name)),
    [],
    "metrics the rules name that no role exports",
  );
});

/**
 * What an operator watches names only metrics the roles export: an alert rule
 * (deploy/prometheus/alerts.yaml) on a metric that does not exist never fires, and a dashboard panel
 * (deploy/grafana/quic-tunnel.json) on one stays empty, and nobody notices.
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
  return new Set([...metrics.keys()].map((series) => baseName(series.replace(/\{.*$/, ""))));
}

const RULES = readFileSync(join(ROOT, "deploy", "prometheus", "alerts.yaml"), "utf8");
const DASHBOARD = JSON.parse(readFileSync(join(ROOT, "deploy", "grafana", "quic-tunnel.json"), "utf8"));

/** A series name without the suffixes of a histogram's series. */
const baseName = (series: string) => series.replace(/_(bucket|sum|count)$/, "");

/** The metric names in `text` (ours and the process series), as {@link exported} names them. */
const metricNames = (text: string) => new Set([...text.matchAll(/\b(?:quic_tunnel|process)_[a-z_]+/g)].map((match) => baseName(match[0])));

interface Panel {
  type: string;
  title: string;
  description?: string;
  targets?: { expr: string }[];
}

test("every dashboard panel says what it shows and queries something", () => {
  const panels = (DASHBOARD.panels as Panel[]).filter((panel) => panel.type !== "row");
  assert.ok(panels.length >= 12, `${panels.length} panels`);
  for (const panel of panels) {
    assert.ok(panel.description, `${panel.title}: a description`);
    assert.ok(panel.targets?.length && panel.targets.every((target) => metricNames(target.expr).size > 0), `${panel.title}: a query`);
  }
  const variables = DASHBOARD.templating.list.map((variable: { name: string }) => variable.name);
  for (const used of JSON.stringify(DASHBOARD.panels).matchAll(/\$([a-z_]+)/g)) {
    if (!used[1].startsWith("_")) assert.ok(variables.includes(used[1]), `$${used[1]} is a dashboard variable`);
  }
});

test("every metric the alert rules and the dashboard name is exported by a server or an agent", { skip: SLOW_TRANSPORT }, async () => {
  const named = new Set([...metricNames(RULES), ...metricNames(JSON.stringify(DASHBOARD))]);
  assert.ok(named.size >= 20, `the rules and the dashboard name metrics (${[...named].join(", ")})`);
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
    () => "every metric the rules and the dashboard name",
  ).catch(async () => new Set([...(await exported(server)), ...(await exported(agent))]));
  assert.deepEqual(
    [...named].filter((name) => !names.has(name)),
    [],
    "metrics the rules or the dashboard name that no role exports",
  );
});

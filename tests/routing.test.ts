/**
 * Destination routing with the real roles: agents announce what they reach (--agent-identifiers),
 * the server picks by --proxy-strategies, and a CONNECT no strategy finds an agent for gets 503
 * with the reason.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import { type RoleProcess, rawExchange, roleMetrics, SLOW_TRANSPORT, startAgent, startHttpTarget, startServer } from "./harness.ts";
import { until } from "./wait.ts";

const track = trackProcesses();

describe("destination routing", { skip: SLOW_TRANSPORT }, () => {
  // One target on every loopback address: 127.0.0.2, 127.0.5.9 and 127.0.0.1 are three "nodes".
  let target: Awaited<ReturnType<typeof startHttpTarget>>;
  before(async () => {
    target = await startHttpTarget("0.0.0.0");
  });
  after(() => target.close());

  const get = (port: number, host: string) =>
    rawExchange(port, `CONNECT ${host}:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`, { timeoutMs: 5_000 });
  const served = async (agent: RoleProcess) => (await roleMetrics(agent)).get('quic_tunnel_connect_responses_total{code="200"}') ?? 0;

  test("destHost sends a CONNECT to the agent that announced its target, defaultRoute the rest to the gateway agent", async () => {
    const server = track(await startServer({ args: ["--proxy-strategies", "destHost,defaultRoute", "--admin-addr", "127.0.0.1:0"] }));
    const node = track(
      await startAgent(server.quicPort, {
        args: ["--agent-id", "node-a", "--agent-identifiers", "ipv4=127.0.0.2&cidr=127.0.5.0/24", "--admin-addr", "127.0.0.1:0"],
      }),
    );
    const gateway = track(
      await startAgent(server.quicPort, {
        args: ["--agent-id", "gateway", "--agent-identifiers", "default-route=true", "--admin-addr", "127.0.0.1:0"],
      }),
    );
    await until(async () => (await roleMetrics(server)).get("quic_tunnel_agents_connected") === 2, "both agents");
    await server.waitFor(/agent \S+ is node-a/);
    await server.waitFor(/agent \S+ is gateway/);
    for (const host of ["127.0.0.2", "127.0.5.9", "127.0.0.1"]) {
      for (let i = 0; i < 4; i++) assert.match(await get(server.tcpPort, host), /hello through the tunnel/, host);
    }
    // Metrics are rendered at most once a second: wait for the figures to come in.
    const figures = async () => {
      const dials = await roleMetrics(server);
      const by = (strategy: string) => dials.get(`quic_tunnel_strategy_dials_total{strategy="${strategy}"}`);
      return `node ${await served(node)}, gateway ${await served(gateway)}; destHost ${by("destHost")}, defaultRoute ${by("defaultRoute")}`;
    };
    const expected = "node 8, gateway 4; destHost 8, defaultRoute 4";
    let last = "";
    await until(
      async () => {
        last = await figures();
        return last === expected;
      },
      () => `${expected} (last: ${last})`,
    );
  });

  test("three agents each allowed only its own target: destHost sends every CONNECT to its own (a wrong one would answer 403), an unknown target falls through to default", async () => {
    const server = track(await startServer({ args: ["--proxy-strategies", "destHost,default", "--admin-addr", "127.0.0.1:0"] }));
    const hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    for (const [index, host] of hosts.entries()) {
      track(
        await startAgent(server.quicPort, {
          args: ["--agent-id", `node-${index}`, "--agent-identifiers", `ipv4=${host}`, "--allow", `${host}:${target.port}`],
        }),
      );
    }
    for (const index of hosts.keys()) await server.waitFor(new RegExp(`agent \\S+ is node-${index}`));
    for (let round = 0; round < 5; round++) {
      for (const host of hosts) assert.match(await get(server.tcpPort, host), /hello through the tunnel/, host);
    }
    for (let i = 0; i < 3; i++) assert.match(await get(server.tcpPort, "127.0.0.9"), /^HTTP\/1\.1 403 /, "an agent's --allow, not 503");
    let last = "";
    await until(
      async () => {
        const metrics = await roleMetrics(server);
        last = ["destHost", "default"].map((strategy) => metrics.get(`quic_tunnel_strategy_dials_total{strategy="${strategy}"}`)).join(" ");
        return last === "15 3";
      },
      () => `15 dials by destHost and 3 by default (last: ${last})`,
    );
  });

  test("a CONNECT that no strategy finds an agent for is answered 503 at once, with the reason", async () => {
    const server = track(await startServer({ args: ["--proxy-strategies", "destHost"] }));
    track(await startAgent(server.quicPort, { args: ["--agent-identifiers", "ipv4=127.0.0.2"] }));
    await server.waitFor(/agent \S+ is /);
    assert.match(await get(server.tcpPort, "127.0.0.2"), /hello through the tunnel/);
    const started = performance.now();
    const refused = await get(server.tcpPort, "127.0.0.1");
    assert.match(refused, /^HTTP\/1\.1 503 /);
    assert.match(refused, /no connected agent serves 127\.0\.0\.1 by --proxy-strategies destHost/);
    assert.ok(performance.now() - started < 2_000, "not after --agent-wait");
  });
});

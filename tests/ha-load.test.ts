/**
 * High availability under load, with real processes on loopback: three server replicas behind a
 * UDP balancer (agents) and a TCP balancer (clients), two agents given only the balancer's address,
 * thousands of CONNECTs, a replica killed and started again; and 200 agent connections on one
 * server, for what each costs it. Long: run with `npm run test:ha` (QUIC_TUNNEL_LOAD=1); the
 * default run skips it. The figures it prints go into closing notes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, describe, test } from "node:test";
import { connectTimes } from "../scripts/traffic.ts";
import { startTcpBalancer, type TcpBalancer } from "./fixtures/tcp-balancer.ts";
import { httpTargetFixture, rssMb, trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  curlDownload,
  expectedSha256,
  freePort,
  linesOf,
  ROOT,
  rawExchange,
  roleMetrics,
  runtimeCommand,
  type ServerProcess,
  scratchCerts,
  sha256,
  startAgent,
  startServer,
  startUdpBalancer,
  type UdpBalancer,
} from "./harness.ts";
import { until } from "./wait.ts";

const LOAD = process.env.QUIC_TUNNEL_LOAD === "1" ? undefined : "a load run: npm run test:ha";
const track = trackProcesses();
const target = httpTargetFixture();
const stoppers: (() => Promise<void>)[] = [];
after(() => Promise.all(stoppers.map((stop) => stop())));

/** `count` CONNECT + GET exchanges through `port`, `parallel` at a time: how many got each kind of answer. */
async function connects(port: number, options: { count: number; parallel: number }): Promise<Record<string, number>> {
  const answers: Record<string, number> = {};
  const request = `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`;
  let started = 0;
  const worker = async () => {
    while (started++ < options.count) {
      const reply = await rawExchange(port, request, { timeoutMs: 15_000 }).catch((err: Error) => `error ${err.message}`);
      const kind = reply.includes("hello through the tunnel") ? "ok" : (reply.split("\r\n")[0] || "closed").slice(0, 60);
      answers[kind] = (answers[kind] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: options.parallel }, worker));
  return answers;
}

const agentsAt = async (server: ServerProcess) => (await roleMetrics(server)).get("quic_tunnel_agents_connected");

describe("high availability under load", { skip: LOAD }, () => {
  test("three replicas, two agents, 3,000 CONNECTs through a TCP balancer; a replica killed costs only its own tunnels and comes back", async () => {
    const quicPorts = [await freePort("udp"), await freePort("udp"), await freePort("udp")];
    const tcpPorts = [await freePort("tcp"), await freePort("tcp"), await freePort("tcp")];
    const replica = (index: number) =>
      startServer({
        quicPort: quicPorts[index],
        tcpPort: tcpPorts[index],
        args: ["--server-id", `replica-${index}`, "--server-count", "3", "--admin-addr", "127.0.0.1:0"],
      }).then(track);
    const servers = [await replica(0), await replica(1), await replica(2)];
    // A seed of its own each run: which replica a flow lands on is the balancer's luck, as a Service's is.
    const seed = Math.floor(Math.random() * 2 ** 30);
    const udp: UdpBalancer = await startUdpBalancer(quicPorts, { seed });
    const tcp: TcpBalancer = await startTcpBalancer(tcpPorts);
    stoppers.push(udp.stop, tcp.stop);
    const agentFlags = { args: ["--admin-addr", "127.0.0.1:0"] };
    const agents = [track(await startAgent(udp.port, agentFlags)), track(await startAgent(udp.port, agentFlags))];
    const seated = performance.now();
    await until(async () => (await Promise.all(servers.map(agentsAt))).every((count) => count === 2), "both agents at every replica", {
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    console.log(`both agents at all three replicas ${Math.round(performance.now() - seated)} ms after they started`);

    const loadStarted = performance.now();
    const answers = await connects(tcp.port, { count: 3_000, parallel: 50 });
    console.log(
      `3,000 CONNECTs in ${Math.round(performance.now() - loadStarted)} ms: ${JSON.stringify(answers)}; per replica ${JSON.stringify(tcp.connections)}`,
    );
    assert.deepEqual(answers, { ok: 3_000 });
    for (const port of tcpPorts) assert.ok(tcp.connections[port] >= 900, `replica on ${port} took ${tcp.connections[port]} of 3,000`);

    // A download through each replica while replica 1 is killed: only its own fails, and not cleanly.
    const downloads = servers.map((server) => curlDownload(server.tcpPort, target.port, { mib: 48, rate: "8M" }));
    await until(
      async () =>
        (await Promise.all(servers.map(async (server) => (await roleMetrics(server)).get("quic_tunnel_tunnels_active") ?? 0))).every(
          (n) => n >= 1,
        ),
      "a download through every replica",
    );
    await servers[1].stop("SIGKILL");
    const killed = performance.now();
    const during = await connects(tcp.port, { count: 300, parallel: 20 });
    console.log(`300 CONNECTs right after the kill: ${JSON.stringify(during)}`);
    assert.deepEqual(during, { ok: 300 }, "clients of the surviving replicas see nothing");
    await Promise.all(
      agents.map((agent) =>
        until(async () => (await roleMetrics(agent)).get("quic_tunnel_servers_connected") === 2, "each agent to notice", {
          timeoutMs: 15_000,
          intervalMs: 100,
        }),
      ),
    );
    console.log(`both agents noticed the killed replica ${Math.round(performance.now() - killed)} ms after the kill`);
    const [first, lost, third] = await Promise.all(downloads);
    // What the killed replica had written the kernel still delivers: the download may end whole, never cut short.
    if (lost.code === 0) assert.equal(sha256(lost.stdout), expectedSha256(48), "a clean end only of a whole download");
    console.log(`the download through the killed replica: curl exit ${lost.code}, ${lost.stdout.length >> 20} MiB of 48`);
    for (const survived of [first, third]) {
      assert.equal(survived.code, 0, survived.stderr);
      assert.equal(sha256(survived.stdout), expectedSha256(48));
    }

    // Started again on the same ports: both agents find it through the UDP balancer.
    servers[1] = await replica(1);
    const restarted = performance.now();
    await until(async () => (await agentsAt(servers[1])) === 2, "both agents back at the restarted replica", {
      timeoutMs: 45_000,
      intervalMs: 100,
    });
    console.log(
      `both agents back at the restarted replica ${Math.round(performance.now() - restarted)} ms after it started (balancer seed ${seed})`,
    );
    assert.deepEqual(await connects(servers[1].tcpPort, { count: 100, parallel: 10 }), { ok: 100 });
  });

  test("200 agent connections on one server: what each costs it, and CONNECT set-up with them connected", async () => {
    const certs = scratchCerts();
    const server = track(await startServer({ certs, args: ["--admin-addr", "127.0.0.1:0"] }));
    const agent = track(await startAgent(server.quicPort, { certs }));
    const path = [{ name: "one agent", port: server.tcpPort, direct: false }];
    const alone = (await connectTimes(path, { targetPort: target.port, count: 300 })).times["one agent"];
    const before = rssMb(server.child.pid);

    const [command, base] = runtimeCommand("scripts/many-agents.ts");
    const many = spawn(command, [...base, ...agentArgs(`127.0.0.1:${server.quicPort}`, certs), "--count", "200"], {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "inherit"],
    });
    stoppers.push(async () => {
      many.stdin?.end();
      many.kill();
    });
    const connected = await linesOf(many)();
    assert.equal(connected, "connected 200");
    await until(async () => (await agentsAt(server)) === 201, "201 agent connections at the server");
    const withMany = (
      await connectTimes(
        path.map((p) => ({ ...p, name: "201 agents" })),
        { targetPort: target.port, count: 300 },
      )
    ).times["201 agents"];
    const after = rssMb(server.child.pid);
    const p = (times: number[], q: number) => [...times].sort((a, b) => a - b)[Math.floor(q * (times.length - 1))].toFixed(2);
    console.log(
      `server RSS ${before.toFixed(0)} MB with one agent, ${after.toFixed(0)} MB with 201: ${(((after - before) * 1024) / 200).toFixed(0)} KB per agent connection; ` +
        `CONNECT p50/p99 ${p(alone, 0.5)}/${p(alone, 0.99)} ms with one agent, ${p(withMany, 0.5)}/${p(withMany, 0.99)} ms with 201`,
    );
    assert.equal(withMany.length, 300, "every CONNECT answered 200");
    assert.ok(agent.child.exitCode === null);
  });
});

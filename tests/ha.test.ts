/**
 * Several server replicas behind one UDP balancer, as a Deployment with `replicas: 3` behind a
 * Service: one agent must hold a connection to each (`--server-count`), so that a client of any
 * replica reaches it, and a replica that dies costs only its own tunnels.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { httpTargetFixture, trackProcesses } from "./fixtures.ts";
import {
  curlDownload,
  expectedSha256,
  freePort,
  rawExchange,
  roleMetrics,
  type ServerProcess,
  SLOW_TRANSPORT,
  sha256,
  startAgent,
  startLossyRelay,
  startServer,
  startUdpBalancer,
  type UdpBalancer,
} from "./harness.ts";
import { until } from "./wait.ts";

const track = trackProcesses();
const target = httpTargetFixture();
const balancers: UdpBalancer[] = [];
after(() => Promise.all(balancers.map((balancer) => balancer.stop())));

const hello = (server: ServerProcess) =>
  rawExchange(server.tcpPort, `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`, { timeoutMs: 5_000 });
const agentsOf = async (server: ServerProcess) => (await roleMetrics(server)).get("quic_tunnel_agents_connected");

describe("several servers", { skip: SLOW_TRANSPORT }, () => {
  test("three replicas behind one balancer: one agent connects to every replica, and a replica that dies costs only its own tunnels", async () => {
    const quicPorts = [await freePort("udp"), await freePort("udp"), await freePort("udp")];
    const replica = (index: number) =>
      startServer({
        quicPort: quicPorts[index],
        args: ["--server-id", `replica-${index}`, "--server-count", "3", "--admin-addr", "127.0.0.1:0"],
      }).then(track);
    const servers = [await replica(0), await replica(1), await replica(2)];
    const balancer = await startUdpBalancer(quicPorts);
    balancers.push(balancer);
    const agent = track(await startAgent(balancer.port, { args: ["--admin-addr", "127.0.0.1:0"] }));
    await until(async () => (await Promise.all(servers.map(agentsOf))).every((count) => count === 1), "an agent at every replica", {
      timeoutMs: 20_000,
      intervalMs: 200,
    });
    const metrics = await roleMetrics(agent);
    assert.equal(metrics.get("quic_tunnel_servers_connected"), 3);
    assert.equal(metrics.get("quic_tunnel_servers_wanted"), 3);
    for (const server of servers) assert.match(await hello(server), /hello through the tunnel/, "a client of every replica is served");

    // A download through replica 0 while replica 1 dies: it finishes intact, replica 2 still serves.
    // 32 MiB at 8 MB/s: the kernel's socket buffers take several MB of it, so the server's tunnel
    // ends that much before curl does. With 16 MiB it could last less than the second for which the
    // server's metrics are rendered, and once ended unseen (curl exited 0 first).
    const download = curlDownload(servers[0].tcpPort, target.port, { mib: 32, rate: "8M" });
    let finished: Awaited<typeof download> | undefined;
    void download.then((result) => {
      finished = result;
    });
    await until(
      async () => ((await roleMetrics(servers[0])).get("quic_tunnel_tunnels_active") ?? 0) >= 1,
      () =>
        `the download to start (curl: ${finished ? `exit ${finished.code} ${finished.stderr.trim()}` : "running"}; agent: ${agent.log().split("\n").slice(-6).join(" | ")})`,
    );
    await servers[1].stop("SIGKILL");
    await until(async () => (await roleMetrics(agent)).get("quic_tunnel_servers_connected") === 2, "the agent to notice", {
      timeoutMs: 15_000,
      intervalMs: 200,
    });
    assert.match(await hello(servers[2]), /hello through the tunnel/, "the surviving replicas still serve");
    const down = await download;
    assert.equal(down.code, 0, down.stderr);
    assert.equal(sha256(down.stdout), expectedSha256(32), "a transfer through a surviving replica is intact");

    // The replica comes back (same id, same port): the agent finds it again through the balancer.
    servers[1] = await replica(1);
    await until(async () => (await agentsOf(servers[1])) === 1, "the agent back at the restarted replica", {
      timeoutMs: 20_000,
      intervalMs: 200,
    });
    assert.equal((await roleMetrics(agent)).get("quic_tunnel_servers_connected"), 3);
    assert.match(await hello(servers[1]), /hello through the tunnel/);
    assert.ok(
      Object.values(await balancer.flows()).every((flows) => flows >= 1),
      "each replica got flows of its own",
    );
  });

  test("--server with several addresses: the agent holds a connection to each, though they name no count", async () => {
    const servers = [track(await startServer()), track(await startServer()), track(await startServer())];
    const list = servers.map((server) => `127.0.0.1:${server.quicPort}`).join(",");
    track(await startAgent(servers[0].quicPort, { args: ["--server", list] }));
    for (const server of servers) {
      await until(async () => /hello through the tunnel/.test(await hello(server).catch(() => "")), "every server to reach the agent");
    }
  });

  test("a hello answered later than its timeout still names the server: a connection that duplicates another's is left", async () => {
    // One server reached twice: straight, and through a path whose round trip (1.2 s) outlasts
    // the hello's 1 s timeout. Two --server entries want two seats; they can only find one server.
    const server = track(await startServer({ args: ["--server-id", "only-one"] }));
    const relay = await startLossyRelay(server.quicPort, { loss: 0, delayMs: 600 });
    const agent = track(
      await startAgent(server.quicPort, {
        args: [
          "--server",
          `127.0.0.1:${server.quicPort},127.0.0.1:${relay.port}`,
          "--handshake-timeout",
          "10s",
          "--admin-addr",
          "127.0.0.1:0",
          "--v",
          "4",
        ],
      }),
    );
    try {
      await agent.waitFor(/reached server id only-one, which another connection holds/, 15_000);
      assert.equal((await roleMetrics(agent)).get("quic_tunnel_servers_wanted"), 2);
      await until(async () => (await roleMetrics(agent)).get("quic_tunnel_servers_connected") === 1, "one server, counted once");
    } finally {
      await relay.stop();
    }
  });
});

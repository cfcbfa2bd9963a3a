/**
 * The agent's ways to the server beside QUIC, with the real roles: the TCP transport (TLS on TCP to
 * --listen-agent-tcp), through an HTTP proxy (a real tinyproxy), and --transport auto: on TCP
 * within seconds when UDP is blocked, and back on QUIC once it is not, without cutting a transfer.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { tcpUnsupported } from "../lib/transport/tcp/mod.ts";
import { noTinyproxy, startTinyproxy, stopTinyproxy } from "./fixtures/tinyproxy.ts";
import { rssMb, trackProcesses } from "./fixtures.ts";
import {
  adminGet,
  agentArgs,
  curlDownload,
  expectedSha256,
  freePort,
  rawExchange,
  roleMetrics,
  run,
  SLOW_TRANSPORT,
  scratchCerts,
  sha256,
  spawnRole,
  startAgent,
  startHttpTarget,
  startLossyRelay,
  startServer,
  transferBothWays,
} from "./harness.ts";
import { until } from "./wait.ts";

const track = trackProcesses();
const AGENT_TCP = ["--listen-agent-tcp", "127.0.0.1:0"];

describe("transports: TCP, a proxy, and auto", { skip: SLOW_TRANSPORT ?? tcpUnsupported }, () => {
  let target: Awaited<ReturnType<typeof startHttpTarget>>;
  before(async () => {
    target = await startHttpTarget();
  });
  after(async () => {
    await target.close();
  });

  /** 64 MiB down and up through the server's TCP listener with curl; both must arrive intact. */
  const bothWays = async (tcpPort: number) => (await transferBothWays(tcpPort, target.port, { mib: 64 })).assertIntact();

  test("--transport tcp: 64 MiB each way arrive intact, and metrics and logs say tcp", async () => {
    const server = track(await startServer({ args: [...AGENT_TCP, "--admin-addr", "127.0.0.1:0"] }));
    const agent = track(
      await startAgent(server.quicPort, {
        args: ["--transport", "tcp", "--server-tcp", `127.0.0.1:${server.agentTcpPort}`, "--admin-addr", "127.0.0.1:0"],
      }),
    );
    assert.match(agent.log(), /connected to server 127\.0\.0\.1:\d+ .*transport=tcp/);
    await bothWays(server.tcpPort);
    assert.equal((await roleMetrics(agent)).get('quic_tunnel_server_transport{transport="tcp"}'), 1);
    const admin = Number((await agent.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
    assert.deepEqual(await adminGet(admin, "/readyz"), { status: 200, body: "ready: connected over tcp\n" });
  });

  test("--transport tcp with a client that reads slowly: flow control holds the agent back, memory stays bounded", async () => {
    const server = track(await startServer({ args: AGENT_TCP }));
    const agent = track(
      await startAgent(server.quicPort, { args: ["--transport", "tcp", "--server-tcp", `127.0.0.1:${server.agentTcpPort}`] }),
    );
    const before = { server: rssMb(server.child.pid), agent: rssMb(agent.child.pid) };
    const peak = { ...before };
    const sampler = setInterval(() => {
      peak.server = Math.max(peak.server, rssMb(server.child.pid));
      peak.agent = Math.max(peak.agent, rssMb(agent.child.pid));
    }, 100);
    // 1 GiB asked for, read at 2 MiB/s for 3 s: the agent could send hundreds of MiB meanwhile.
    const slow = await run(
      "curl",
      [
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        "--limit-rate",
        "2M",
        "--max-time",
        "3",
        "-p",
        "--proxy",
        `127.0.0.1:${server.tcpPort}`,
        `http://127.0.0.1:${target.port}/mib/1024`,
      ],
      { timeoutMs: 10_000 },
    );
    clearInterval(sampler);
    assert.equal(slow.code, 28, `curl stopped at its --max-time: ${slow.stderr}`);
    const read = Number(slow.stdout.toString());
    assert.ok(read > 2 << 20 && read < 16 << 20, `the client read at its own pace (${read} bytes)`);
    for (const role of ["server", "agent"] as const) {
      assert.ok(peak[role] - before[role] < 64, `${role} grew ${(peak[role] - before[role]).toFixed(0)} MB for a slow reader`);
    }
  });

  test("--transport auto with UDP blocked: on TCP within 10 s, 64 MiB each way intact; once UDP passes again, back on QUIC while a TCP transfer finishes intact", async () => {
    const server = track(await startServer({ args: [...AGENT_TCP, "--admin-addr", "127.0.0.1:0"] }));
    // A firewall that drops every datagram, in front of the server's QUIC port.
    const relay = await startLossyRelay(server.quicPort, { loss: 1 });
    try {
      const started = performance.now();
      const agent = track(
        await startAgent(relay.port, {
          args: [
            "--transport",
            "auto",
            "--server-tcp",
            `127.0.0.1:${server.agentTcpPort}`,
            "--transport-probe",
            "1s",
            "--admin-addr",
            "127.0.0.1:0",
          ],
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      assert.match(agent.log(), /connected to server 127\.0\.0\.1:\d+ .*transport=tcp/);
      assert.ok(seconds < 10, `connected over TCP after ${seconds.toFixed(1)} s`);
      await bothWays(server.tcpPort);

      // A download slow enough to be in flight when the agent moves back to QUIC.
      const download = curlDownload(server.tcpPort, target.port, { mib: 32, rate: "8M" });
      await until(async () => ((await roleMetrics(server)).get("quic_tunnel_tunnels_active") ?? 0) >= 1, "the download to start");
      await relay.setLoss(0);
      let downloaded = false;
      void download.finally(() => {
        downloaded = true;
      });
      await agent.waitFor(/moved to QUIC/, 15_000);
      const connectionsDuring = (await roleMetrics(agent)).get("quic_tunnel_server_connections");
      if (!downloaded) assert.equal(connectionsDuring, 2, "the TCP connection still carrying the download is counted beside QUIC's");
      const down = await download;
      assert.equal(down.code, 0, down.stderr);
      assert.equal(sha256(down.stdout), expectedSha256(32), "the transfer over TCP finished intact after the move");
      await until(async () => (await roleMetrics(agent)).get('quic_tunnel_server_transport{transport="quic"}') === 1, "the agent on QUIC");
      await until(async () => (await roleMetrics(agent)).get("quic_tunnel_server_connections") === 1, "the TCP connection to close");
      // New tunnels go over QUIC now: the relay forwards their datagrams.
      const before = (await relay.stats()).forwarded;
      await bothWays(server.tcpPort);
      assert.ok((await relay.stats()).forwarded > before + 10_000, "the new transfers went over QUIC");
      assert.doesNotMatch(agent.log(), /connection to server .* lost/, "the agent never lost its connection");
    } finally {
      await relay.stop();
    }
  });

  test("--transport tcp through an HTTP proxy (tinyproxy): 64 MiB each way intact, and the proxy carried the agent's CONNECT", {
    skip: noTinyproxy,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "tinyproxy-"));
    const proxy = await startTinyproxy(dir, "agent-proxy", []);
    try {
      const server = track(await startServer({ args: AGENT_TCP }));
      const agent = track(
        await startAgent(server.quicPort, {
          args: ["--transport", "tcp", "--server-tcp", `127.0.0.1:${server.agentTcpPort}`, "--proxy", proxy.url.href],
        }),
      );
      assert.match(agent.log(), /connected to server 127\.0\.0\.1:\d+ .*transport=tcp proxy=127\.0\.0\.1:\d+/);
      await bothWays(server.tcpPort);
      assert.match(
        readFileSync(proxy.log, "utf8"),
        new RegExp(`127\\.0\\.0\\.1:${server.agentTcpPort}`),
        "tinyproxy logged the agent's CONNECT",
      );
    } finally {
      await stopTinyproxy(proxy.child);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("--transport tcp with several --server addresses: each connection dials its own address over TCP", async () => {
    // Each server's TCP listener on its QUIC port's number, as the default (no --server-tcp) expects.
    const onePort = async () => {
      const port = await freePort("tcp");
      return track(await startServer({ quicPort: port, args: ["--listen-agent-tcp", `127.0.0.1:${port}`] }));
    };
    const servers = [await onePort(), await onePort()];
    track(
      await startAgent(servers[0].quicPort, {
        args: ["--transport", "tcp", "--server", servers.map((server) => `127.0.0.1:${server.quicPort}`).join(",")],
      }),
    );
    for (const server of servers) {
      const hello = () =>
        rawExchange(server.tcpPort, `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`, { timeoutMs: 5_000 });
      await until(
        async () => /hello through the tunnel/.test(await hello().catch(() => "")),
        `an agent at the server on port ${server.quicPort}`,
      );
    }
  });

  test("--proxy or --server-tcp without a TCP transport, or a proxy that is not http://, is refused at start", async () => {
    for (const [args, message] of [
      [["--proxy", "http://127.0.0.1:3128"], /--proxy is for the TCP transport: give --transport tcp or --transport auto/],
      [["--server-tcp", "127.0.0.1:1"], /--server-tcp is for the TCP transport/],
      [
        ["--transport", "tcp", "--proxy", "socks5://u:secret@127.0.0.1:1080"],
        /--proxy "socks5:\/\/u:\*\*\*@127\.0\.0\.1:1080": expected an http:\/\/ proxy URL/,
      ],
    ] as const) {
      const agent = spawnRole("agent.ts", [...agentArgs("127.0.0.1:1", scratchCerts()), ...args]);
      assert.notEqual(await agent.exited, 0, args.join(" "));
      assert.match(agent.log(), message);
      assert.doesNotMatch(agent.log(), /secret/, "no password in the message");
    }
  });
});

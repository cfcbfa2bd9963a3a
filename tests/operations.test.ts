/**
 * Production features with the real roles as processes: admin endpoint and metrics, allow-list,
 * limits, idle tunnels, graceful shutdown, agent identity, JSON logs, TLS and Unix socket frontends.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, test } from "node:test";
import tls from "node:tls";
import { udpBufferShortfall } from "../lib/transport/mod.ts";
import type { DevCertPaths } from "../scripts/dev-certs.ts";
import { httpTargetFixture, rssMb, skip, trackProcesses } from "./fixtures.ts";
import {
  adminGet,
  ENGINES,
  expectedSha256,
  foreignCerts,
  parseMetrics,
  ROOT,
  type RoleProcess,
  rawExchange,
  roleMetrics,
  run,
  runtimeCommand,
  SIGNALLED_EXIT_CODE_HIDDEN,
  SLOW_TRANSPORT,
  scratchCerts,
  serverTlsArgs,
  sha256,
  spawnRole,
  startAgent,
  startLossyRelay,
  startServer,
} from "./harness.ts";
import { udpRelay } from "./transport/relay.ts";
import { pause, until } from "./wait.ts";

const track = trackProcesses();
const target = httpTargetFixture();

const connectAndGet = (port: number, host = "127.0.0.1") =>
  rawExchange(port, `CONNECT ${host}:${target.port} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n`);

/**
 * Opens a tunnel to the HTTP target and waits for its 200. `finish` sends a request, half-closes,
 * and resolves with everything the client received once the tunnel closed.
 */
async function openTunnel(port: number): Promise<{ finish(): Promise<string> }> {
  const socket = net.connect({ port, host: "127.0.0.1" });
  let received = "";
  socket.on("error", () => {});
  socket.on("data", (chunk) => {
    received += chunk.toString();
  });
  socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`);
  await new Promise((resolve) => socket.once("data", resolve));
  return {
    finish() {
      socket.end("GET / HTTP/1.0\r\n\r\n");
      return new Promise((resolve) => socket.once("close", () => resolve(received)));
    },
  };
}

/** True when a TCP connection to `port` on loopback is refused; one that is accepted is closed at once. */
function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
}

test("server and agent name the kernel's cap on UDP socket buffers at start, exactly when it is below what they ask", {
  skip: SLOW_TRANSPORT,
}, async () => {
  const server = track(await startServer());
  const agent = track(await startAgent(server.quicPort));
  const expected = udpBufferShortfall();
  for (const [role, started] of [
    ["server", server],
    ["agent", agent],
  ] as const) {
    const line = started
      .log()
      .split("\n")
      .find((text) => text.includes("the kernel caps UDP socket buffers"));
    assert.equal(line !== undefined, expected !== undefined, `${role}: ${line ?? "no warning"}; /proc says: ${expected ?? "enough"}`);
    if (expected) assert.ok(line?.includes(expected), `${role} logs the warning whole: ${line}`);
  }
});

test("a transport flag the engine cannot honour is refused when given and warned about at its default", {
  skip: SLOW_TRANSPORT,
}, async (t) => {
  if (!ENGINES.includes("node-quic")) return skip(t, "node:quic is not available on this runtime");
  const server = track(await startServer());
  const refused = track(await startAgent(server.quicPort, { engine: "node-quic", wait: false, args: ["--max-udp-payload", "1232"] }));
  assert.equal(await refused.exited, 1);
  assert.match(refused.log(), /--max-udp-payload: node-quic cannot cap UDP payloads at 1232 bytes: lsquic in Bun sizes its own packets/);
  const warned = track(await startAgent(server.quicPort, { engine: "node-quic" }));
  assert.match(warned.log(), /WARN.*node-quic cannot cap UDP payloads at 1232 bytes.*\(--max-udp-payload is at its default\)/);
  const quiche = track(await startAgent(server.quicPort, { engine: "quiche", args: ["--max-udp-payload", "1232"] }));
  assert.doesNotMatch(quiche.log(), /cannot cap UDP payloads/);
});

test("--quic-retry on node-quic, which cannot send Retry: refused when given, a warning at its default, silent when off", {
  skip: SLOW_TRANSPORT,
}, async (t) => {
  if (!ENGINES.includes("node-quic")) return skip(t, "node:quic is not available on this runtime");
  const listen = ["--listen-tcp", "127.0.0.1:0", "--listen-quic", "127.0.0.1:0", ...serverTlsArgs(scratchCerts())];
  const refused = track(spawnRole("server.ts", [...listen, "--quic-retry"], { engine: "node-quic" }));
  assert.equal(await refused.exited, 1);
  assert.match(refused.log(), /--quic-retry: node-quic cannot validate agent addresses with a QUIC Retry/);
  const retryWarning = /WARN.*node-quic cannot validate agent addresses with a QUIC Retry.*\(--quic-retry is at its default/;
  assert.match(track(await startServer({ engine: "node-quic" })).log(), retryWarning);
  assert.doesNotMatch(track(await startServer({ engine: "node-quic", args: ["--quic-retry=false"] })).log(), /QUIC Retry/);
  assert.doesNotMatch(track(await startServer({ engine: "quiche", args: ["--quic-retry"] })).log(), /QUIC Retry/);
});

describe("admin endpoint", { skip: SLOW_TRANSPORT }, () => {
  test("healthz, readyz and metrics on server and agent, scraped with a real HTTP client", async () => {
    const server = track(await startServer({ args: ["--admin-addr", "127.0.0.1:0"] }));
    const serverAdmin = Number((await server.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
    assert.equal((await adminGet(serverAdmin, "/healthz")).status, 200);
    const notReady = await adminGet(serverAdmin, "/readyz");
    assert.equal(notReady.status, 503);
    assert.match(notReady.body, /no agent connected/);
    // Every counter is there from the start, at 0, and the process's own series as client libraries name them.
    const fresh = parseMetrics((await adminGet(serverAdmin, "/metrics")).body);
    for (const series of [
      "quic_tunnel_agents_rejected_total",
      'quic_tunnel_tunnels_total{outcome="ok"}',
      'quic_tunnel_tunnels_total{outcome="no_agent"}',
      'quic_tunnel_bytes_total{direction="up"}',
      'quic_tunnel_connect_responses_total{code="503"}',
      'quic_tunnel_quic_initials_refused_total{reason="invalid_token"}',
      "quic_tunnel_quic_handshakes_in_progress",
    ]) {
      assert.equal(fresh.get(series), 0, series);
    }
    for (const series of [
      "process_resident_memory_bytes",
      "process_open_fds",
      "process_max_fds",
      "process_start_time_seconds",
      "process_cpu_seconds_total",
      "nodejs_heap_size_used_bytes",
      "nodejs_external_memory_bytes",
    ]) {
      assert.ok((fresh.get(series) ?? 0) > 0, series);
    }
    assert.ok(fresh.has("nodejs_eventloop_lag_p99_seconds"));

    const agent = track(await startAgent(server.quicPort, { args: ["--admin-addr", "127.0.0.1:0"] }));
    const agentAdmin = Number((await agent.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
    assert.equal((await adminGet(serverAdmin, "/readyz")).status, 200);
    assert.equal((await adminGet(agentAdmin, "/readyz")).status, 200);

    assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/);
    assert.match(await rawExchange(server.tcpPort, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 502 /);
    // Each side counts a tunnel when it has ended there, a moment after the client has its answer:
    // wait until both sides have ended both tunnels, whatever they counted them as.
    const scrape = async (port: number) => parseMetrics((await adminGet(port, "/metrics")).body);
    const endedTunnels = (metrics: Map<string, number>) =>
      [...metrics].reduce((sum, [series, value]) => sum + (series.startsWith("quic_tunnel_tunnels_total{") ? value : 0), 0);
    let serverMetrics = new Map<string, number>();
    let agentMetrics = new Map<string, number>();
    await until(
      async () => {
        [serverMetrics, agentMetrics] = await Promise.all([scrape(serverAdmin), scrape(agentAdmin)]);
        return [serverMetrics, agentMetrics].every(
          (metrics) => endedTunnels(metrics) >= 2 && metrics.get("quic_tunnel_tunnels_active") === 0,
        );
      },
      () => `both tunnels to end on server and agent (ended: ${endedTunnels(serverMetrics)} and ${endedTunnels(agentMetrics)})`,
      { intervalMs: 20 },
    );

    assert.equal(serverMetrics.get("quic_tunnel_agents_connected"), 1);
    assert.ok(
      [...serverMetrics.keys()].some((key) =>
        /^quic_tunnel_agent_info\{peer="127\.0\.0\.1:\d+",subject="CN=quic-tunnel-agent"\}$/.test(key),
      ),
    );
    assert.ok((serverMetrics.get('quic_tunnel_tunnels_total{outcome="ok"}') ?? 0) >= 2);
    assert.ok((serverMetrics.get('quic_tunnel_bytes_total{direction="down"}') ?? 0) > 100);
    assert.equal(serverMetrics.get("quic_tunnel_tunnels_active"), 0);
    // Both CONNECTs got the agent's answer (200, 502) and carried it: set-up and duration observed.
    assert.equal(serverMetrics.get("quic_tunnel_connect_setup_seconds_count"), 2);
    assert.ok((serverMetrics.get("quic_tunnel_connect_setup_seconds_sum") ?? 0) > 0);
    assert.equal(serverMetrics.get("quic_tunnel_tunnel_duration_seconds_count"), 2);
    assert.ok([...serverMetrics.keys()].some((key) => key.startsWith("quic_tunnel_quic_rtt_seconds{peer=")));
    assert.ok([...serverMetrics.keys()].some((key) => key.startsWith("quic_tunnel_quic_cwnd_bytes{peer=")));

    assert.equal(agentMetrics.get("quic_tunnel_server_connected"), 1);
    assert.equal(agentMetrics.get("quic_tunnel_servers_connected"), 1, "one server, one replica");
    assert.equal(agentMetrics.get("quic_tunnel_servers_wanted"), 1);
    assert.equal(agentMetrics.get('quic_tunnel_connect_responses_total{code="200"}'), 1);
    assert.equal(agentMetrics.get('quic_tunnel_connect_responses_total{code="502"}'), 1);
    assert.equal(agentMetrics.get("quic_tunnel_dial_duration_seconds_count"), 1);
    assert.equal(agentMetrics.get('quic_tunnel_tunnels_total{outcome="dial_failed"}'), 1);
    assert.equal((await adminGet(agentAdmin, "/nope")).status, 404);
  });
});

/** CPU seconds (user and system) process `pid` has used so far, from /proc. */
function cpuSeconds(pid: number | undefined): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The scrape storm fixture (tests/fixtures/scrapers.ts) against `port`; `stop` ends it and resolves with its report. */
function scrapeStorm(
  port: number,
  concurrency: number,
): { storming: Promise<void>; stop(): Promise<{ statuses: Record<string, number>; failed: number }> } {
  const [command, base] = runtimeCommand("tests/fixtures/scrapers.ts");
  const child = spawn(command, [...base, "--port", String(port), "--concurrency", String(concurrency), "--seconds", "120"], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  let output = "";
  child.stdout.setEncoding("utf8");
  const storming = new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (text: string) => {
      output += text;
      if (output.startsWith("storming\n")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`the scrapers exited (${code}) before all were answered: ${output}`)));
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    storming,
    async stop() {
      child.stdin.end();
      await exited;
      return JSON.parse(output.slice(output.indexOf("\n") + 1));
    },
  };
}

describe("admin endpoint under a scrape storm", { skip: SLOW_TRANSPORT }, () => {
  test("40 scrapers in a loop while 1,000 tunnels open: every tunnel succeeds, and scrapes are served from a cache", async (t) => {
    const server = track(await startServer({ args: ["--admin-addr", "127.0.0.1:0"] }));
    const adminPort = Number((await server.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
    track(await startAgent(server.quicPort));
    const storm = scrapeStorm(adminPort, 40);
    await storm.storming;
    // What the storm alone costs the server: its CPU over two seconds of it (the span is the point).
    const cpuBefore = cpuSeconds(server.child.pid);
    await pause(2_000);
    const stormCores = (cpuSeconds(server.child.pid) - cpuBefore) / 2;
    // 1,000 tunnels at once, each one timed.
    const started = performance.now();
    const took: number[] = [];
    const failed: string[] = [];
    let next = 0;
    const opener = async () => {
      for (; next < 1000; ) {
        next++;
        const begun = performance.now();
        const reply = await connectAndGet(server.tcpPort).catch((err: Error) => err.message);
        took.push(performance.now() - begun);
        if (!/hello through the tunnel/.test(reply)) failed.push(reply.slice(0, 100));
      }
    };
    await Promise.all(Array.from({ length: 1000 }, opener));
    const seconds = (performance.now() - started) / 1000;
    const report = await storm.stop();
    took.sort((a, b) => a - b);
    const scrapes = Object.values(report.statuses).reduce((sum, count) => sum + count, 0);
    const summary = `storm alone: ${stormCores.toFixed(2)} cores of the server; 1,000 tunnels in ${seconds.toFixed(1)} s (p50 ${took[500].toFixed(0)} ms, p99 ${took[990].toFixed(0)} ms, max ${took[999].toFixed(0)} ms) beside ${scrapes} scrapes ${JSON.stringify(report)}`;
    t.diagnostic(summary);
    assert.deepEqual(failed.slice(0, 5), [], `every tunnel succeeded (${failed.length} did not): ${summary}`);
    // A burst of 1,000 takes about a second here with or without scrapers; none may wait for a timeout.
    assert.ok(took[999] < 5_000, `every tunnel was answered within 5 s: ${summary}`);
    assert.ok((report.statuses["200"] ?? 0) >= 40, `scrapers were answered: ${summary}`);
    assert.ok(stormCores < 0.25, `the storm alone took under a quarter of a core: ${summary}`);
    // Served from the cache: two scrapes in a row are the same text, CPU seconds and event-loop lag included.
    const [first, second] = [await adminGet(adminPort, "/metrics"), await adminGet(adminPort, "/metrics")];
    assert.ok(second.body === first.body, "the second scrape is the first one's text");
  });
});

describe("limits and policy", { skip: SLOW_TRANSPORT }, () => {
  test("--allow: allowed targets pass, others get 403, names are checked after resolution", async () => {
    const server = track(await startServer());
    const agent = track(await startAgent(server.quicPort, { args: ["--allow", `127.0.0.0/8:${target.port}`] }));
    assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/);
    assert.match(await connectAndGet(server.tcpPort, "localhost"), /hello through the tunnel/);
    const otherPort = await rawExchange(server.tcpPort, `CONNECT 127.0.0.1:${target.port + 1} HTTP/1.1\r\n\r\n`);
    assert.match(otherPort, /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*not allowed by the agent's --allow rules/);
    await agent.waitFor(/tunnel stream \d+ refused: target 127\.0\.0\.1:\d+ .*is not allowed/);
    assert.doesNotMatch(agent.log(), /no --allow rules/);
  });

  test("an agent without --allow warns that it is an open proxy", async () => {
    const server = track(await startServer());
    const agent = track(await startAgent(server.quicPort));
    await agent.waitFor(/no --allow rules: any host:port/);
  });

  test("--max-tunnels on the server and on the agent answer 503 beyond the limit", async () => {
    for (const side of ["server", "agent"] as const) {
      const limit = ["--max-tunnels", "1"];
      // --v 2: each side logs a tunnel's end, right after it has given back the tunnel's slot.
      const server = track(await startServer({ args: [...(side === "server" ? limit : []), "--v", "2"] }));
      const agent = track(await startAgent(server.quicPort, { args: [...(side === "agent" ? limit : []), "--v", "2"] }));
      const holder = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
      holder.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`);
      await new Promise((resolve) => holder.once("data", resolve));
      const second = await rawExchange(server.tcpPort, `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`);
      assert.match(second, new RegExp(`^HTTP/1\\.1 503 [\\s\\S]*${side} tunnel limit \\(1\\) reached`), side);
      holder.destroy();
      await (side === "server" ? server : agent).waitFor(/tunnel (stream \d+|\S+) (closed|ended with error)/);
      assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/, `${side}: room again once the first closed`);
      await server.stop();
    }
  });

  test("--tunnel-idle-timeout closes a tunnel that carries nothing", async () => {
    const server = track(await startServer({ args: ["--tunnel-idle-timeout", "300ms"] }));
    track(await startAgent(server.quicPort));
    const startedAt = Date.now();
    const reply = await rawExchange(server.tcpPort, `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`, { timeoutMs: 5_000 });
    assert.match(reply, /^HTTP\/1\.1 200 OK/);
    const elapsed = Date.now() - startedAt;
    assert.ok(elapsed >= 250 && elapsed < 3_000, `closed after ${elapsed} ms`);
  });

  test("--tunnel-idle-timeout spares a tunnel that keeps carrying bytes", async () => {
    const echo = net.createServer((socket) => socket.on("error", () => {}).pipe(socket));
    await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
    const server = track(await startServer({ args: ["--tunnel-idle-timeout", "400ms"] }));
    track(await startAgent(server.quicPort));
    const socket = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
    socket.on("error", () => {});
    let received = "";
    socket.on("data", (chunk) => {
      received += chunk.toString();
    });
    const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now())));
    socket.write(`CONNECT 127.0.0.1:${(echo.address() as net.AddressInfo).port} HTTP/1.1\r\n\r\n`);
    // Six bytes 200 ms apart: 1.2 s in all, three times the idle timeout, never idle for 400 ms.
    let quietSince = 0;
    for (let i = 0; i < 6; i++) {
      const echoed = new Promise<void>((resolve) => socket.once("data", () => resolve()));
      socket.write(String(i));
      await echoed;
      quietSince = Date.now();
      await pause(200); // a fixed gap is the point: quiet for half the idle timeout, then busy again
    }
    assert.equal(socket.destroyed, false, "the active tunnel is still open");
    assert.match(received, /012345$/);
    const end = await closed;
    // Timers may fire a millisecond or two early on some runtimes (Deno's CI run saw 199 of 200 here).
    assert.ok(end - quietSince >= 350 && end - quietSince < 3_000, `closed ${end - quietSince} ms after it fell quiet`);
    echo.close();
  });

  test("--quic-retry=false: the server sends no Retry (and does by default)", async () => {
    for (const [args, retries] of [
      [[], true],
      [["--quic-retry=false"], false],
    ] as const) {
      const server = track(await startServer({ args: [...args] }));
      let sawRetry = false;
      // Looks at the server's datagrams on their way to the agent: a Retry is a long header of type 3.
      const relay = await udpRelay(server.quicPort, (direction, datagram) => {
        if (direction === "to-client" && (datagram[0] & 0xf0) === 0xf0) sawRetry = true;
        return false;
      });
      const agent = track(await startAgent(relay.port));
      await agent.stop();
      relay.close();
      await server.stop();
      assert.equal(sawRetry, retries, `Retry with ${args.join(" ") || "the default"}`);
    }
  });

  for (const engine of ENGINES) {
    test(`--agent-subject admits only the named agents; a refused agent never says it connected, engine ${engine}`, async () => {
      const server = track(await startServer({ engine, args: ["--agent-subject", "some-other-agent"] }));
      const agent = track(await startAgent(server.quicPort, { engine, wait: false, args: ["--reconnect-max", "300ms"] }));
      await server.waitFor(/rejected agent \S+: certificate CN=quic-tunnel-agent is not among --agent-subject/);
      await until(() => agent.log().split("agent identity not allowed").length > 3, "three refusals in the agent's log");
      assert.doesNotMatch(agent.log(), /connected to server/);
      const allowed = track(await startServer({ engine, args: ["--agent-subject", "quic-tunnel-agent"] }));
      track(await startAgent(allowed.quicPort, { engine }));
    });
  }
});

describe("graceful shutdown", { skip: SLOW_TRANSPORT }, () => {
  test("an agent stopped while it dials a silent server exits at once, not after its backoff", async () => {
    // A UDP socket that never answers: the dial would run 20 s into --handshake-timeout, then a 30 s backoff.
    const silent = (await import("node:dgram")).createSocket("udp4");
    await new Promise<void>((resolve) => silent.bind(0, "127.0.0.1", resolve));
    const agent = track(
      await startAgent(silent.address().port, {
        wait: false,
        args: ["--handshake-timeout", "20s", "--reconnect-min", "30s", "--reconnect-max", "30s", "--admin-addr", "127.0.0.1:0"],
      }),
    );
    // The admin endpoint answers once start-up has run, signal handlers included; the dial is on.
    await roleMetrics(agent);
    agent.child.kill("SIGTERM");
    const startedAt = Date.now();
    await agent.waitFor(/agent stopped/, 25_000);
    assert.ok(Date.now() - startedAt < 3_000, `stopped after ${Date.now() - startedAt} ms`);
    silent.close();
  });

  test("the server stops accepting, lets an open tunnel finish, then exits 0", async () => {
    const server = track(await startServer({ args: ["--shutdown-grace", "5s"] }));
    track(await startAgent(server.quicPort));
    const open = await openTunnel(server.tcpPort);
    server.child.kill("SIGTERM");
    await server.waitFor(/draining for up to 5000 ms/);
    // The listener closes as draining starts, on some runtimes a turn after the log line: wait until
    // a bare connection (which sends nothing, so opens no tunnel) is refused.
    await until(() => connectionRefused(server.tcpPort), "the server to stop accepting clients once draining");
    await assert.rejects(connectAndGet(server.tcpPort), /ECONNREFUSED/);
    assert.match(await open.finish(), /hello through the tunnel/);
    await server.waitFor(/server stopped/);
    if (!SIGNALLED_EXIT_CODE_HIDDEN) assert.equal(await server.exited, 0);
  });

  test("a second signal exits at once", async () => {
    const server = track(await startServer({ args: ["--shutdown-grace", "30s"] }));
    track(await startAgent(server.quicPort));
    const open = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
    open.on("error", () => {});
    open.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`);
    await new Promise((resolve) => open.once("data", resolve));
    server.child.kill("SIGTERM");
    await server.waitFor(/draining/);
    const startedAt = Date.now();
    assert.equal(await server.stop("SIGTERM"), SIGNALLED_EXIT_CODE_HIDDEN ? "SIGTERM" : 1);
    assert.ok(Date.now() - startedAt < 2_000);
    open.destroy();
  });

  for (const engine of ENGINES) {
    test(`a draining agent closes its connection only once the server has what its last tunnel sent, engine ${engine}`, async () => {
      // 40 ms round trips: when the tunnel ends at the agent, megabytes of it are still in flight.
      // The client half-closes first, so the tunnel ends at the agent as soon as the target's answer
      // is written; a target that answers a half-closed client in full (HTTP servers may not).
      const answer = randomBytes(8 << 20);
      const answering = net.createServer({ allowHalfOpen: true }, (socket) => {
        socket.on("error", () => {});
        socket.once("data", () => socket.end(answer));
      });
      await new Promise<void>((resolve) => answering.listen(0, "127.0.0.1", resolve));
      const server = track(await startServer({ engine }));
      const relay = await startLossyRelay(server.quicPort, { loss: 0, delayMs: 20 });
      try {
        const agent = track(await startAgent(relay.port, { engine, args: ["--shutdown-grace", "20s"] }));
        const socket = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
        const chunks: Buffer[] = [];
        socket.on("error", () => {});
        socket.on("data", (chunk: Buffer) => chunks.push(chunk));
        socket.write(`CONNECT 127.0.0.1:${(answering.address() as net.AddressInfo).port} HTTP/1.1\r\n\r\n`);
        await new Promise((resolve) => socket.once("data", resolve));
        agent.child.kill("SIGTERM");
        await server.waitFor(/is draining/);
        socket.end("go");
        await new Promise((resolve) => socket.once("close", resolve));
        const received = Buffer.concat(chunks);
        const body = received.subarray(received.indexOf("\r\n\r\n") + 4);
        assert.equal(body.length, answer.length, "the whole answer, not a cut one");
        assert.equal(sha256(body), sha256(answer));
        await agent.waitFor(/agent stopped/);
      } finally {
        await relay.stop();
        answering.close();
      }
    });
  }

  test("a draining agent tells the server at once; new tunnels go to the other agent", async () => {
    const server = track(await startServer({ args: ["--v", "2"] }));
    const leaving = track(await startAgent(server.quicPort, { args: ["--shutdown-grace", "5s"] }));
    track(await startAgent(server.quicPort));
    await server.waitFor(/agents=2/);
    // Two open tunnels: round-robin puts one on each agent, so the leaving one has a tunnel to finish.
    const open = [await openTunnel(server.tcpPort), await openTunnel(server.tcpPort)];
    leaving.child.kill("SIGTERM");
    await server.waitFor(/is draining; no new tunnels go to it/);
    for (let i = 0; i < 4; i++) assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/);
    assert.equal(leaving.child.exitCode, null, "the leaving agent waits for its open tunnel");
    for (const tunnel of open) assert.match(await tunnel.finish(), /hello through the tunnel/);
    if (!SIGNALLED_EXIT_CODE_HIDDEN) assert.equal(await leaving.exited, 0);
  });
});

describe("logs and frontends", { skip: SLOW_TRANSPORT }, () => {
  test("--log-format json writes one JSON object per line with stable keys", async () => {
    const server = track(await startServer({ args: ["--log-format", "json", "--v", "2"] }));
    track(await startAgent(server.quicPort));
    await connectAndGet(server.tcpPort);
    await server.waitFor(/tunnel .* closed/);
    const lines = server.log().trim().split("\n");
    for (const line of lines) {
      const event = JSON.parse(line);
      for (const key of ["time", "level", "logger", "msg"]) assert.ok(key in event, `${key} in ${line}`);
    }
    const closed = lines.map((line) => JSON.parse(line)).find((event) => /closed/.test(event.msg));
    for (const key of ["tunnel", "agent", "stream", "up", "down", "ms"]) assert.ok(key in closed, key);
  });

  test("TLS on the TCP listener, with a required client certificate", async () => {
    const certs = scratchCerts();
    const server = track(
      await startServer({
        args: ["--tcp-cert-file", certs.serverCert, "--tcp-cert-key", certs.serverKey, "--tcp-client-ca-file", certs.ca],
      }),
    );
    track(await startAgent(server.quicPort));
    const proxy = ["--proxy", `https://localhost:${server.tcpPort}`, "--proxy-cacert", certs.ca, "-p", "--max-time", "60", "-sS"];
    const withCert = await run("curl", [
      ...proxy,
      "--proxy-cert",
      certs.clientCert,
      "--proxy-key",
      certs.clientKey,
      `http://127.0.0.1:${target.port}/`,
    ]);
    assert.equal(withCert.stdout.toString(), "hello through the tunnel\n", withCert.stderr);
    // Bulk through the TLS frontend: the pipe frees each chunk once the TLS socket has taken it.
    const bulk = await run("curl", [
      ...proxy,
      "--proxy-cert",
      certs.clientCert,
      "--proxy-key",
      certs.clientKey,
      `http://127.0.0.1:${target.port}/mib/32`,
    ]);
    assert.equal(sha256(bulk.stdout), expectedSha256(32), bulk.stderr);
    const withoutCert = await run("curl", [...proxy, `http://127.0.0.1:${target.port}/`]);
    assert.notEqual(withoutCert.code, 0);
    const handshake = await run(
      "openssl",
      [
        "s_client",
        "-connect",
        `127.0.0.1:${server.tcpPort}`,
        "-CAfile",
        certs.ca,
        "-cert",
        certs.clientCert,
        "-key",
        certs.clientKey,
        "-verify_return_error",
        "-quiet",
      ],
      { input: Buffer.from(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`) },
    );
    assert.match(handshake.stdout.toString(), /^HTTP\/1\.1 200 OK[\s\S]*hello through the tunnel/);
  });

  test("a Unix domain socket listener, replacing a stale socket file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-uds-"));
    const path = join(dir, "proxy.sock");
    const stale = net.createServer().listen(path);
    await new Promise((resolve) => stale.once("listening", resolve));
    stale.close();
    writeFileSync(join(dir, "not-a-socket"), "x");
    const server = track(await startServer({ args: ["--listen-uds", path] }));
    track(await startAgent(server.quicPort));
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(path);
      let text = "";
      socket.on("data", (chunk) => {
        text += chunk;
      });
      socket.on("end", () => resolve(text));
      socket.on("error", reject);
      socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`);
    });
    assert.match(raw, /^HTTP\/1\.1 200 OK\r\n\r\n[\s\S]*hello through the tunnel/);
    const [command, base] = runtimeCommand("server.ts");
    const refused = await run(command, [
      ...base,
      "--listen-uds",
      join(dir, "not-a-socket"),
      "--listen-tcp",
      "127.0.0.1:0",
      "--listen-quic",
      "127.0.0.1:0",
      ...serverTlsArgs(scratchCerts()),
    ]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /exists and is not a socket/);
    assert.ok(existsSync(join(dir, "not-a-socket")));
  });
});

/** A copy of `certs` in a new directory, for a test to replace files in. */
function liveCopy(certs: DevCertPaths): DevCertPaths {
  const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-live-"));
  const copy = Object.fromEntries(
    Object.entries(certs).map(([name, path]) => [name, join(dir, basename(path))]),
  ) as unknown as DevCertPaths;
  for (const name of Object.keys(certs) as Array<keyof DevCertPaths>) copyFileSync(certs[name], copy[name]);
  return copy;
}

/** Puts the files of `from` in place of those of `to`, the way a secret update replaces them. */
function replaceCerts(to: DevCertPaths, from: DevCertPaths, names: Array<keyof DevCertPaths>): void {
  for (const name of names) copyFileSync(from[name], to[name]);
}

/**
 * Through the TLS frontend on `port` (trusting `ca`): CONNECT to the HTTP target and GET; resolves
 * with what came back and the SHA-256 fingerprint of the certificate the frontend presented.
 */
function tlsConnectAndGet(port: number, ca: string): Promise<{ reply: string; fingerprint: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: "127.0.0.1", servername: "localhost", ca: readFileSync(ca) }, () => {
      socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`);
    });
    let reply = "";
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no close after 10 s; got ${JSON.stringify(reply)}`)));
    socket.on("data", (chunk) => {
      reply += chunk.toString();
    });
    socket.on("error", reject);
    socket.on("end", () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve({ reply, fingerprint });
    });
  });
}

/** The lines in which `role` logged a reload on SIGHUP, or a refused one. */
const sighupReloads = (role: RoleProcess) =>
  role.log().match(/certificate files reloaded on SIGHUP|reload failed.*cause=SIGHUP/g)?.length ?? 0;

/**
 * Sends SIGHUP to `role` and waits until it has logged `lines` more reloads (a server with a TLS
 * frontend logs one per set of files); fails if the process ends instead.
 */
async function hangUp(role: RoleProcess, name: string, lines: number): Promise<void> {
  const before = sighupReloads(role);
  const ended = () => role.child.exitCode !== null || role.child.signalCode !== null;
  // Not child.kill: Deno's marks the child as signalled and would send nothing more.
  process.kill(role.child.pid as number, "SIGHUP");
  await until(() => sighupReloads(role) >= before + lines || ended(), `${name} to log its reload`);
  assert.equal(ended(), false, `${name} survived SIGHUP (${role.child.signalCode ?? role.child.exitCode}):\n${role.log().slice(-400)}`);
  assert.equal(sighupReloads(role), before + lines, `${name} logged ${lines} reloads`);
}

describe("SIGHUP", { skip: SLOW_TRANSPORT }, () => {
  test("reloads the certificates of server, agent and agent-tcp, ends none of them nor a tunnel, and new files are used", async () => {
    const original = liveCopy(scratchCerts());
    const rotated = foreignCerts();
    const live = liveCopy(original);
    const fingerprint = (path: string) => new X509Certificate(readFileSync(path)).fingerprint256;
    // Server A: QUIC and a TLS frontend on the same files, and an agent; server B with an agent-tcp.
    const frontendTls = ["--tcp-cert-file", live.serverCert, "--tcp-cert-key", live.serverKey];
    const serverA = track(await startServer({ certs: live, args: frontendTls }));
    const agent = track(await startAgent(serverA.quicPort, { certs: live }));
    const serverB = track(await startServer());
    const agentTcp = track(
      await startAgent(serverB.quicPort, { script: "agent-tcp.ts", args: ["--upstream", `127.0.0.1:${target.port}`] }),
    );
    const roles = [serverA, agent, serverB, agentTcp];
    const openA = net.connect({ port: serverA.tcpPort, host: "127.0.0.1" });
    const heldA = tls.connect({ socket: openA, servername: "localhost", ca: readFileSync(original.ca) });
    let heldReply = "";
    heldA.on("data", (chunk) => {
      heldReply += chunk.toString();
    });
    heldA.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\n`);
    await until(() => heldReply.startsWith("HTTP/1.1 200"), "the held tunnel through server A to open");
    // Through agent-tcp the client speaks HTTP to the target at once: one request now, one later.
    const heldB = net.connect({ port: serverB.tcpPort, host: "127.0.0.1" });
    let heldBReply = "";
    heldB.on("data", (chunk) => {
      heldBReply += chunk.toString();
    });
    heldB.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await until(() => heldBReply.includes("hello through the tunnel"), "the held tunnel through agent-tcp to answer");

    for (const [role, name, lines] of [
      [serverA, "the server", 2],
      [agent, "the agent", 1],
      [serverB, "the second server", 1],
      [agentTcp, "agent-tcp", 1],
    ] as const) {
      await hangUp(role, name, lines);
    }
    for (const role of roles) assert.doesNotMatch(role.log(), /received SIG|draining for up to|server stopped/);
    const held = new Promise<void>((resolve) => heldA.once("end", resolve));
    heldA.end("GET / HTTP/1.0\r\n\r\n");
    await held;
    assert.match(heldReply, /hello through the tunnel/, "the tunnel open across the SIGHUPs carried on");
    const heldBClosed = new Promise<void>((resolve) => heldB.once("close", resolve));
    heldB.end("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    await heldBClosed;
    assert.equal(heldBReply.match(/hello through the tunnel/g)?.length, 2, "and so did the one through agent-tcp");
    assert.match((await tlsConnectAndGet(serverA.tcpPort, original.ca)).reply, /hello through the tunnel/);
    assert.match(await rawExchange(serverB.tcpPort, "GET / HTTP/1.0\r\n\r\n"), /hello through the tunnel/);

    // New files, then SIGHUP: the server presents and trusts the new ones (QUIC and TLS frontend).
    replaceCerts(live, rotated, ["serverCert", "serverKey", "ca"]);
    await hangUp(serverA, "the server", 2);
    const after = await tlsConnectAndGet(serverA.tcpPort, rotated.ca);
    assert.match(after.reply, /hello through the tunnel/);
    assert.equal(after.fingerprint, fingerprint(rotated.serverCert), "the TLS frontend presents the new certificate");
    const rotatedAgent = track(await startAgent(serverA.quicPort, { certs: rotated }));
    assert.match(rotatedAgent.log(), /connected to server/, "an agent of the new CA is accepted, and accepts the new server certificate");

    // The agent's new files, then SIGHUP: its next connection (to a restarted server A) uses them.
    // The old ones would not do: the server trusts only the new CA now, and presents a certificate
    // only the new CA verifies.
    replaceCerts(live, rotated, ["clientCert", "clientKey"]);
    await hangUp(agent, "the agent", 1);
    const connections = () => agent.log().match(/connected to server/g)?.length ?? 0;
    const before = connections();
    await serverA.stop("SIGTERM");
    track(await startServer({ certs: live, quicPort: serverA.quicPort }));
    await until(
      () => connections() > before,
      () => `agent to reconnect with its new certificate:\n${agent.log().slice(-600)}`,
      {
        timeoutMs: 10_000,
      },
    );
  });

  test("on node-quic the server keeps its certificates, says why, and stays up; the agent reloads", async (t) => {
    if (!ENGINES.includes("node-quic")) return skip(t, "node:quic is not available on this runtime");
    const server = track(await startServer({ engine: "node-quic" }));
    const agent = track(await startAgent(server.quicPort, { engine: "node-quic" }));
    await hangUp(server, "the node-quic server", 1);
    assert.match(
      server.log(),
      /certificate reload failed, keeping the previous certificates: .*cannot change the certificates of a running server/,
    );
    await hangUp(agent, "the node-quic agent", 1);
    assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/);
  });
});

describe("certificate reload", { skip: SLOW_TRANSPORT }, () => {
  test("rotated server certificates apply to new handshakes without dropping open tunnels; a bad file is refused", async () => {
    const { copyFileSync, writeFileSync: write } = await import("node:fs");
    const { foreignCerts } = await import("./harness.ts");
    const original = scratchCerts();
    const rotated = foreignCerts();
    const dir = mkdtempSync(join(tmpdir(), "quic-tunnel-rotate-"));
    const live = { ...original, serverCert: join(dir, "tls.crt"), serverKey: join(dir, "tls.key"), ca: join(dir, "ca.crt") };
    copyFileSync(original.serverCert, live.serverCert);
    copyFileSync(original.serverKey, live.serverKey);
    copyFileSync(original.ca, live.ca);
    const server = track(await startServer({ certs: live }));
    track(await startAgent(server.quicPort));
    const open = await openTunnel(server.tcpPort);

    copyFileSync(rotated.serverCert, live.serverCert);
    copyFileSync(rotated.serverKey, live.serverKey);
    copyFileSync(rotated.ca, live.ca);
    await server.waitFor(/certificate files changed \(--cert-file, --cert-key, --client-ca-file\); new handshakes use them/);
    const rotatedAgent = track(await startAgent(server.quicPort, { certs: rotated }));
    assert.match(rotatedAgent.log(), /connected to server/);

    write(live.serverCert, "not a certificate\n");
    await server.waitFor(/certificate reload failed, keeping the previous certificates: .*--cert-file/);
    track(await startAgent(server.quicPort, { certs: rotated }));

    assert.match(await open.finish(), /hello through the tunnel/, "the tunnel opened before the rotation kept working");
  });
});

for (const engine of ENGINES) {
  describe(`load, engine ${engine}`, { skip: SLOW_TRANSPORT }, () => {
    test("1,000 concurrent tunnels, each a request and a response: no failures, no leaked sockets", async () => {
      // A tunnel left half-open (a lost FIN, cloudflare/quiche#2525) would be ended by the idle
      // timeout, and the logs (--v 2) would say so: none may need it.
      const idle = ["--tunnel-idle-timeout", "2s", "--v", "2"];
      const server = track(await startServer({ engine, args: idle }));
      const agent = track(await startAgent(server.quicPort, { engine, args: idle }));
      const { readdirSync, readFileSync, readlinkSync } = await import("node:fs");
      // A leaked tunnel leaks TCP sockets. UDP sockets are QUIC connections (an agent opens more
      // under load and closes them when idle) and other descriptors are the runtime's own.
      const tcpInodes = () =>
        new Set(
          ["tcp", "tcp6"].flatMap((table) =>
            readFileSync(`/proc/net/${table}`, "utf8")
              .split("\n")
              .slice(1)
              .map((row) => row.trim().split(/\s+/)[9])
              .filter(Boolean),
          ),
        );
      const descriptors = (pid: number | undefined) => {
        const tcp = tcpInodes();
        return readdirSync(`/proc/${pid}/fd`)
          .map((fd) => {
            try {
              return readlinkSync(`/proc/${pid}/fd/${fd}`);
            } catch {
              return "closed meanwhile";
            }
          })
          .filter((name) => tcp.has(/socket:\[(\d+)\]/.exec(name)?.[1] ?? ""));
      };
      // What a leftover socket is: its line in /proc/net (addresses, TCP state).
      const describeSocket = (name: string) => {
        const inode = /socket:\[(\d+)\]/.exec(name)?.[1] ?? "";
        for (const table of ["tcp", "tcp6"]) {
          const row = readFileSync(`/proc/net/${table}`, "utf8")
            .split("\n")
            .find((line) => line.trim().split(/\s+/).includes(inode));
          if (row) return `${name} (${table}: ${row.trim()})`;
        }
        return name;
      };
      // Sockets of finished tunnels may close a little after the last reply on a loaded machine:
      // wait (bounded) for the count to come back, and name what is left over if it does not.
      const backToBaseline = async (pid: number | undefined, baseline: string[]) => {
        const deadline = Date.now() + 8000;
        let now = descriptors(pid);
        while (now.length > baseline.length && Date.now() < deadline) {
          await pause(100);
          now = descriptors(pid);
        }
        return { count: now.length, extra: now.filter((name) => !baseline.includes(name)).map(describeSocket) };
      };
      // Warm up once so that lazily created state is part of the baseline, once the warm-up
      // tunnel's own sockets have closed.
      const cold = { server: descriptors(server.child.pid), agent: descriptors(agent.child.pid) };
      assert.match(await connectAndGet(server.tcpPort), /hello through the tunnel/);
      for (const [role, pid, baseline] of [
        ["server", server.child.pid, cold.server],
        ["agent", agent.child.pid, cold.agent],
      ] as const) {
        const after = await backToBaseline(pid, baseline);
        assert.equal(after.count, baseline.length, `${role}: the warm-up tunnel's sockets closed; extra: ${after.extra.join(", ")}`);
      }
      const baseline = { server: descriptors(server.child.pid), agent: descriptors(agent.child.pid) };
      const rss = () => ({ server: rssMb(server.child.pid), agent: rssMb(agent.child.pid) });
      const burst = async () => {
        const replies = await Promise.all(
          Array.from({ length: 1000 }, () => connectAndGet(server.tcpPort).catch((err: Error) => err.message)),
        );
        const failures = replies.filter((reply) => !reply.includes("hello through the tunnel"));
        assert.equal(failures.length, 0, `failures: ${failures.slice(0, 3).join(" | ")}`);
        for (const [role, pid] of [
          ["server", server.child.pid],
          ["agent", agent.child.pid],
        ] as const) {
          const after = await backToBaseline(pid, baseline[role]);
          assert.equal(after.count, baseline[role].length, `${role} sockets back to baseline; extra: ${after.extra.join(", ")}`);
        }
      };
      // Memory: a gross leak only (64 KiB per tunnel). RSS swings by tens of MB from burst to burst
      // with garbage collection; `npm run soak` shows the trend over many bursts.
      const start = rss();
      await burst();
      const end = rss();
      const grown = { server: end.server - start.server, agent: end.agent - start.agent };
      assert.ok(grown.server < 64 && grown.agent < 64, `RSS growth in the burst: ${JSON.stringify(grown)} MB`);
      const endedIdle = [server, agent].flatMap((role) =>
        role
          .log()
          .split("\n")
          .filter((line) => line.includes("tunnel idle for")),
      );
      assert.deepEqual(endedIdle, [], "tunnels ended by the idle timeout (server, agent)");
    });

    test("1,000 tunnels held open at once on one agent each echo, then all close", async () => {
      const echo = net.createServer({ allowHalfOpen: true }, (socket) => socket.on("error", () => {}).pipe(socket));
      await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", 2048, resolve));
      const echoPort = (echo.address() as net.AddressInfo).port;
      const server = track(await startServer({ engine }));
      const agent = track(await startAgent(server.quicPort, { engine }));
      const tunnels = await Promise.all(
        Array.from({ length: 1000 }, async (_, i) => {
          const socket = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
          socket.on("error", () => {});
          let received = "";
          socket.setEncoding("latin1");
          const echoed = new Promise<boolean>((resolve) => {
            socket.on("data", (text: string) => {
              received += text;
              if (received.endsWith(`ping ${i}\n`)) resolve(received.startsWith("HTTP/1.1 200 OK\r\n\r\n"));
            });
            socket.once("close", () => resolve(false));
          });
          socket.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\n\r\nping ${i}\n`);
          return { socket, ok: await echoed, received };
        }),
      );
      const failed = tunnels.filter((tunnel) => !tunnel.ok);
      assert.equal(
        failed.length,
        0,
        `tunnels that did not echo: ${failed.length}; first: ${JSON.stringify(failed[0]?.received.slice(0, 200))}`,
      );
      const closed = tunnels.map(({ socket }) => new Promise((resolve) => socket.once("close", resolve)));
      for (const { socket } of tunnels) socket.end();
      await Promise.all(closed);
      echo.close();
      await agent.stop();
      await server.stop();
    });
  });
}

/**
 * Clients that stop reading, against the real roles on both engines: the bytes held for them stay
 * within --max-buffered, fresh tunnels keep working while they wait and once they have gone, and
 * nothing of them stays behind (quiche 0.18 used to keep the receive window of every stream a
 * non-reader abandoned, until the connection could carry nothing).
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { type NonReadingClients, nonReadingClients } from "../scripts/traffic.ts";
import { httpTargetFixture, httpTargetProcess, rssMb, trackProcesses } from "./fixtures.ts";
import { cpuSeconds, currentRuntime, ENGINES, rawExchange, roleMetrics, SLOW_TRANSPORT, startAgent, startServer } from "./harness.ts";
import { pause, until } from "./wait.ts";

const track = trackProcesses();
const children: ChildProcess[] = [];
after(() => {
  for (const child of children) child.kill("SIGKILL");
});
/** The flood's target. */
const target = httpTargetFixture();
/**
 * The fresh tunnels' target, a process of its own: the flood's, busy serving a thousand downloads,
 * answered a fresh tunnel a second or two late, and the tunnel was blamed for it.
 */
let freshTarget: Awaited<ReturnType<typeof httpTargetProcess>> | undefined;
before(async () => {
  freshTarget = await httpTargetProcess();
});
after(() => freshTarget?.stop());

/** {@link nonReadingClients} toward the shared target, killed if a test leaves them behind. */
async function nonReaders(proxyPort: number, options: { count: number; mib: number; halfClose?: boolean }): Promise<NonReadingClients> {
  const clients = await nonReadingClients(proxyPort, { ...options, target: target.port });
  children.push(clients.child);
  return clients;
}

/**
 * What each process keeps: the least RSS it occupies over two seconds (a single sample may catch
 * the garbage of tunnels just ended, before a collection).
 */
async function leastRss<K extends string>(pids: Record<K, number | undefined>): Promise<Record<K, number>> {
  const least = Object.fromEntries(Object.keys(pids).map((key) => [key, Number.POSITIVE_INFINITY])) as Record<K, number>;
  for (let sample = 0; sample < 20; sample++) {
    await pause(100);
    for (const key of Object.keys(pids) as K[]) least[key] = Math.min(least[key], rssMb(pids[key]));
  }
  return least;
}

/** The share of a core each role may use, in a second, once the flood waits for its readers. */
const SETTLED_CPU = 0.2;

/** How long a fresh tunnel takes to bring a 64 KiB answer (or `mib` MiB, within `timeoutMs`), or the error it got. */
async function freshTunnel(proxyPort: number, options: { mib?: number; timeoutMs?: number } = {}): Promise<number> {
  const { mib, timeoutMs = 5_000 } = options;
  const started = performance.now();
  const path = mib ? `/mib/${mib}` : "/bytes/65536";
  const reply = await rawExchange(proxyPort, `CONNECT 127.0.0.1:${freshTarget?.port} HTTP/1.1\r\n\r\nGET ${path} HTTP/1.0\r\n\r\n`, {
    timeoutMs,
  });
  assert.match(
    reply,
    /^HTTP\/1\.1 200 [\s\S]*\r\n\r\nHTTP\/1\.[01] 200/,
    `a fresh tunnel is answered, got ${reply.length} bytes: ${JSON.stringify(reply.slice(0, 300))}`,
  );
  const size = mib ? mib * 2 ** 20 : 65536;
  assert.ok(reply.length > size, `a fresh tunnel brings its whole answer, got ${reply.length} bytes`);
  return performance.now() - started;
}

for (const engine of ENGINES) {
  describe(`clients that never read, engine ${engine}`, { skip: SLOW_TRANSPORT }, () => {
    test("1,000 clients that never read 64 MiB each: memory within --max-buffered, fresh tunnels served during and after", async () => {
      const budgetMib = 32;
      // node:quic (lsquic) hands back the stream credit of ended streams in late batches, and a
      // stream waits up to a second for it on each connection: a fresh tunnel may wait behind that.
      const settle = 3_000;
      const args = ["--max-buffered", `${budgetMib}MiB`, "--admin-addr", "127.0.0.1:0"];
      const server = track(await startServer({ engine, args: [...args, "--max-tunnels", "5000"] }));
      const agent = track(await startAgent(server.quicPort, { engine, args: [...args, "--max-tunnels", "5000"] }));
      await freshTunnel(server.tcpPort);
      const idle = { server: rssMb(server.child.pid), agent: rssMb(agent.child.pid) };
      const peak = { ...idle };
      const sampler = setInterval(() => {
        peak.server = Math.max(peak.server, rssMb(server.child.pid));
        peak.agent = Math.max(peak.agent, rssMb(agent.child.pid));
      }, 100);
      try {
        const clients = await nonReaders(server.tcpPort, { count: 1000, mib: 64 });
        // The flood has reached both roles once the agent has ended tunnels over the budget.
        await until(
          async () => ((await roleMetrics(agent)).get('quic_tunnel_tunnels_total{outcome="over_budget"}') ?? 0) > 0,
          "the agent to hold a tunnel to the budget",
          {
            timeoutMs: 20_000,
            intervalMs: 100,
          },
        );
        const steady = await leastRss({ server: server.child.pid, agent: agent.child.pid });
        const timed = (attempt: Promise<number>) => attempt.then((ms) => `${ms.toFixed(0)} ms`).catch((err: Error) => err.message);
        // Until the clients' kernel buffers are full (some 4 MiB each, which no role can see), every
        // tunnel moves at full speed, and the budget ends tunnels as they stall: on Node both roles'
        // cores went to it for 5-10 s here. A fresh tunnel meanwhile must arrive whole, however late
        // (the budget once ended fresh ones, holding less than the flood's); once the flood has
        // settled, at once. Settled is both roles using next to no CPU: a steady count of active
        // tunnels, or a quiet agent, was not enough (on Deno the server was still busy then).
        const ramp = await timed(freshTunnel(server.tcpPort, { timeoutMs: 15_000 }));
        const cpu = () => cpuSeconds(server.child.pid) + cpuSeconds(agent.child.pid);
        let cpuBefore: number | undefined;
        await until(
          () => {
            const now = cpu();
            const quiet = cpuBefore !== undefined && now - cpuBefore < 2 * SETTLED_CPU;
            cpuBefore = now;
            return quiet;
          },
          "the flood to settle",
          { timeoutMs: 30_000, intervalMs: 1_000 },
        );
        // On quiche the agent ends stalled tunnels whose unread bytes the server's quiche 0.18
        // holds, and a plain reset would drop them without crediting the connection's window
        // (upstream 0a0d3bd1): the connection carried nothing during and after the flood until
        // streams were aborted in order (lib/transport/quiche/stream-aborts.ts).
        const during = await timed(freshTunnel(server.tcpPort));
        const settled = {
          server: (await roleMetrics(server)).get("quic_tunnel_tunnels_active"),
          agent: (await roleMetrics(agent)).get("quic_tunnel_tunnels_active"),
        };
        await clients.close();
        const afterwards = await timed(freshTunnel(server.tcpPort));
        clearInterval(sampler);
        const figures = `idle ${JSON.stringify(idle)} MB, steady ${JSON.stringify(steady)} MB, peak ${JSON.stringify(peak)} MB, active then ${JSON.stringify(settled)}; fresh tunnel while it ramps up: ${ramp}, during: ${during}, after: ${afterwards}`;
        process.stderr.write(`${engine}: ${figures}\n`);
        assert.match(ramp, /^\d+ ms$/, `a fresh tunnel while the flood ramps up: ${figures}`);
        for (const [when, outcome] of [
          ["during", during],
          ["after", afterwards],
        ]) {
          assert.ok(/^\d+ ms$/.test(outcome) && Number.parseInt(outcome, 10) < settle, `a fresh tunnel ${when} the flood: ${figures}`);
        }
        // What the roles hold for the waiting clients is the budget, plus what is not given back
        // yet of tunnels the budget ended. On Bun the budget's releases (lib/ops/memory.ts) collect
        // and trim: steady 103 MB where it was 107-158 (quiche's agent), 137 where 122-240
        // (node:quic's, which frees a stream's native buffers only once its object is collected).
        // Node's glibc keeps what V8 frees (measured: 312 MB on Node where Bun had 160).
        const uncollected = currentRuntime().kind !== "bun" ? 256 : engine === "node-quic" ? 96 : 48;
        for (const role of ["server", "agent"] as const) {
          assert.ok(steady[role] < idle[role] + budgetMib + uncollected, `${role} holds about its budget while they wait: ${figures}`);
        }
      } finally {
        clearInterval(sampler);
      }
      await until(async () => (await roleMetrics(server)).get("quic_tunnel_tunnels_active") === 0, "the server to close every tunnel", {
        timeoutMs: 20_000,
      });
      const times: number[] = [];
      for (let i = 0; i < 5; i++) times.push(await freshTunnel(server.tcpPort));
      assert.ok(
        Math.max(...times) < settle,
        `fresh tunnels at once once they have gone: ${times.map((ms) => ms.toFixed(0)).join(", ")} ms`,
      );
      const rest = await leastRss({ server: server.child.pid, agent: agent.child.pid });
      const heap = async (role: Parameters<typeof roleMetrics>[0]) => {
        const m = await roleMetrics(role);
        return `heap ${((m.get("nodejs_heap_size_used_bytes") ?? 0) / 2 ** 20).toFixed(0)} external ${((m.get("nodejs_external_memory_bytes") ?? 0) / 2 ** 20).toFixed(0)}`;
      };
      const gone = `once they have gone ${JSON.stringify(rest)} MB (idle before ${JSON.stringify(idle)} MB) server ${await heap(server)} agent ${await heap(agent)}`;
      process.stderr.write(`${engine}: ${gone}\n`);
      // And once they have gone, the roles give back what they held: 10-20 MB over idle with
      // quiche (the issue asks for 20; a loaded machine's margin on top), where 28-70 stayed
      // before the releases. Bun's node:quic agent keeps 23-30 MB of its own that neither a
      // collection nor malloc_trim returns. Node cannot trim (no FFI).
      if (currentRuntime().kind === "bun") {
        for (const role of ["server", "agent"] as const) {
          const leftover = engine === "node-quic" && role === "agent" ? 40 : 24;
          assert.ok(rest[role] < idle[role] + leftover, `${role} within ${leftover} MB of where it started: ${gone}`);
        }
      }
    });

    test("clients that never read and then leave give back all of the connection's receive window (no --max-buffered)", {
      skip: engine === "node-quic" ? "without a budget node:quic holds whatever is sent: nothing to give back" : undefined,
    }, async () => {
      // 300 stalled streams hold some 300 MiB of the agent's answers, more than ten times the
      // largest connection window: each must be credited back once its client has gone.
      const server = track(await startServer({ engine, args: ["--max-buffered", "0", "--admin-addr", "127.0.0.1:0"] }));
      track(await startAgent(server.quicPort, { engine, args: ["--max-buffered", "0"] }));
      const clients = await nonReaders(server.tcpPort, { count: 300, mib: 1024 });
      await pause(12_000);
      await clients.close();
      await until(async () => (await roleMetrics(server)).get("quic_tunnel_tunnels_active") === 0, "the server to close every tunnel", {
        timeoutMs: 20_000,
      });
      for (let i = 0; i < 5; i++) assert.ok((await freshTunnel(server.tcpPort)) < 1_000, "a fresh tunnel at once");
    });

    test("clients that half-close and never read give the connection's window back when --half-close-timeout ends them", {
      skip:
        engine === "node-quic"
          ? "the window this guards is quiche 0.18's (the FIN's way to the agent is tested in e2e and pipe tests)"
          : undefined,
    }, async () => {
      // Each FIN comes right behind its request: it must reach the agent (it once was lost before
      // the pipe began), and both roles then end the quiet half-closed tunnels in order, so that
      // quiche 0.18 drops no unread bytes uncredited.
      const args = ["--max-buffered", "0", "--half-close-timeout", "1s", "--admin-addr", "127.0.0.1:0"];
      const server = track(await startServer({ engine, args }));
      track(await startAgent(server.quicPort, { engine, args }));
      const clients = await nonReaders(server.tcpPort, { count: 40, mib: 64, halfClose: true });
      try {
        await until(
          async () => (await roleMetrics(server)).get("quic_tunnel_tunnels_active") === 0,
          "the half-close timeout to end every tunnel",
          {
            timeoutMs: 20_000,
            intervalMs: 200,
          },
        );
        for (let i = 0; i < 3; i++) assert.ok((await freshTunnel(server.tcpPort, { mib: 16 })) < 3_000, "a fresh tunnel at once");
      } finally {
        await clients.close();
      }
    });
  });
}

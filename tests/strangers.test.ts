/**
 * Strangers at the QUIC port, on each engine: a flood of Initials replaying one genuine Retry token
 * with random connection IDs, and a flood of random datagrams. The server's memory stays bounded,
 * its admin endpoint answers, the agent stays connected, and a transfer during the flood arrives
 * intact.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import {
  ENGINES,
  expectedSha256,
  ROOT,
  run,
  runtimeCommand,
  SLOW_TRANSPORT,
  sha256,
  startAgent,
  startHttpTarget,
  startServer,
} from "./harness.ts";
import { pause } from "./wait.ts";

const track = trackProcesses();
const noop = () => {};

/** Resident memory of a process in MB. */
function rssMb(pid: number | undefined): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
}

/** Runs the flood fixture against `port` and resolves with what it reports. */
function flood(port: number, kind: string, count: number): Promise<{ sent: number; replayedToken: boolean; ms: number }> {
  const [command, base] = runtimeCommand("tests/fixtures/udp-flood.ts");
  const child = spawn(command, [...base, "--port", String(port), "--kind", kind, "--count", String(count)], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  return new Promise((resolve, reject) =>
    child.once("exit", (code) => (code === 0 ? resolve(JSON.parse(output)) : reject(new Error(`flood exited ${code}: ${output}`)))),
  );
}

/** Polls `/healthz` every 50 ms until `done` settles; resolves with the slowest answer in ms. */
async function slowestHealthz(adminPort: number, done: Promise<unknown>): Promise<number> {
  let finished = false;
  void done.finally(() => {
    finished = true;
  });
  let slowest = 0;
  while (!finished) {
    const started = performance.now();
    const response = await fetch(`http://127.0.0.1:${adminPort}/healthz`, { signal: AbortSignal.timeout(5000) });
    assert.equal(response.status, 200);
    await response.text();
    slowest = Math.max(slowest, performance.now() - started);
    // The pace of the probes, not a wait for anything: cut short when `done` settles.
    await Promise.race([pause(50), done.then(noop, noop)]);
  }
  return slowest;
}

for (const engine of ENGINES) {
  describe(`strangers at the QUIC port, engine ${engine}`, { skip: SLOW_TRANSPORT }, () => {
    let target: Awaited<ReturnType<typeof startHttpTarget>>;
    before(async () => {
      target = await startHttpTarget();
    });
    after(async () => {
      await target.close();
    });

    for (const [kind, count, what] of [
      ["retry-replay", 400_000, "400,000 Initials replaying a genuine Retry token with random connection IDs"],
      ["random", 200_000, "200,000 datagrams of random bytes"],
    ] as const) {
      test(`${what}: memory bounded, healthz fast, agent connected, a transfer intact`, async (t) => {
        const server = track(await startServer({ engine, args: ["--admin-addr", "127.0.0.1:0"] }));
        const adminPort = Number((await server.waitFor(/admin endpoint on 127\.0\.0\.1:(\d+)/))[1]);
        const agent = track(await startAgent(server.quicPort, { engine }));
        const before = rssMb(server.child.pid);
        let peak = before;
        const sampler = setInterval(() => {
          peak = Math.max(peak, rssMb(server.child.pid));
        }, 50);
        const flooding = flood(server.quicPort, kind, count);
        const transfer = run("curl", [
          "-sS",
          "--max-time",
          "60",
          "-p",
          "--proxy",
          `127.0.0.1:${server.tcpPort}`,
          `http://127.0.0.1:${target.port}/mib/32`,
        ]);
        const slowest = await slowestHealthz(adminPort, flooding);
        const report = await flooding;
        const result = await transfer;
        clearInterval(sampler);
        const summary = `${JSON.stringify(report)}; server RSS ${before.toFixed(0)} -> peak ${peak.toFixed(0)} MB; slowest /healthz ${slowest.toFixed(0)} ms`;
        t.diagnostic(summary);
        assert.equal(report.sent, count);
        assert.ok(peak - before < 150, `server memory grew by less than 150 MB: ${summary}`);
        assert.ok(slowest < 1000, `/healthz answered within 1 s throughout: ${summary}`);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(sha256(result.stdout), expectedSha256(32), summary);
        assert.doesNotMatch(agent.log(), /connection to server .* lost/, `the agent stayed connected: ${summary}`);
        assert.doesNotMatch(server.log(), /rejected agent .*\n(.*rejected agent.*\n){20}/, "rejections are not logged one line each");
      });
    }
  });
}

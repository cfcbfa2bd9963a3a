/**
 * The role scripts under each runtime, and mixed: a server on one runtime with an agent on another.
 * Bun and Deno come from node_modules (npm packages `bun` and `deno`), Node 24 from the npm registry
 * (`npx node@24`, since these machines ship Node 20). A runtime that cannot be found is reported
 * and its cases skipped, visibly; in CI a missing runtime fails.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import { ROOT, type Runtime, rawExchange, SLOW_TRANSPORT, startAgent, startHttpTarget, startServer } from "./harness.ts";

const runtimes: Partial<Record<Runtime["kind"], Runtime>> = {};
const track = trackProcesses();
let target: Awaited<ReturnType<typeof startHttpTarget>>;

before(async () => {
  for (const kind of ["bun", "deno"] as const) {
    const path = join(ROOT, "node_modules", ".bin", kind);
    if (existsSync(path)) runtimes[kind] = { kind, path };
  }
  if (/^v2[4-9]|^v[3-9]\d/.test(process.version)) runtimes.node = { kind: "node", path: process.execPath };
  else {
    try {
      const path = execFileSync("npx", ["-y", "node@24", "-p", "process.execPath"], { encoding: "utf8", timeout: 120_000 }).trim();
      runtimes.node = { kind: "node", path };
    } catch {
      // reported per case below
    }
  }
  target = await startHttpTarget();
});
after(async () => {
  await target.close();
});

const PAIRS: Array<[Runtime["kind"], Runtime["kind"]]> = [
  ["deno", "deno"],
  ["node", "node"],
  ["deno", "bun"],
  ["bun", "node"],
  ["node", "deno"],
];

for (const [serverKind, agentKind] of PAIRS) {
  test(`server on ${serverKind}, agent on ${agentKind}: a tunnel carries a request`, { skip: SLOW_TRANSPORT }, async (t) => {
    const server = runtimes[serverKind];
    const agent = runtimes[agentKind];
    const missing = [serverKind, agentKind].filter((kind) => !runtimes[kind]);
    if (!server || !agent) {
      if (process.env.CI) assert.fail(`runtime missing: ${missing.join(", ")}`);
      return void t.skip(`runtime missing here: ${missing.join(", ")}`);
    }
    const serverProcess = await startServer({ runtime: server });
    track(serverProcess);
    track(await startAgent(serverProcess.quicPort, { runtime: agent }));
    await serverProcess.waitFor(/agent \S+ connected/);
    const reply = await rawExchange(serverProcess.tcpPort, `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET /mib/1 HTTP/1.0\r\n\r\n`, {
      timeoutMs: 60_000,
    });
    assert.ok(reply.startsWith("HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK"), reply.slice(0, 100));
    assert.ok(reply.length > 1 << 20, `got ${reply.length} bytes`);
  });
}

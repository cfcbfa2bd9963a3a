/** `npm start` (scripts/dev.ts): one clear line and nothing left behind when it cannot start. */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { freePort, run, runtimeCommand, SIGNALLED_EXIT_CODE_HIDDEN, SLOW_TRANSPORT, spawnProcess } from "./harness.ts";

const [command, base] = runtimeCommand("scripts/dev.ts");

/** Free ports and a pid file of its own, so that these tests run beside a real `npm start`. */
async function devEnv(): Promise<NodeJS.ProcessEnv & { DEV_TCP_PORT: string }> {
  return {
    ...process.env,
    DEV_TCP_PORT: String(await freePort("tcp")),
    DEV_QUIC_PORT: String(await freePort("udp")),
    DEV_DEMO_PORT: String(await freePort("tcp")),
    DEV_PID_FILE: join(mkdtempSync(join(tmpdir(), "quic-tunnel-dev-")), "tunnel.pid"),
  };
}

/** Whether any process runs a role script of this checkout (the ones npm start starts). */
async function rolesRunning(pid: number | undefined): Promise<boolean> {
  const { stdout } = await run("ps", ["-o", "pid=", "--ppid", String(pid)]);
  return stdout.toString().trim() !== "";
}

test("a taken port is one line naming it and exit 1, before anything is started", async () => {
  const env = await devEnv();
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(Number(env.DEV_TCP_PORT), "127.0.0.1", resolve));
  const result = await run(command, base, { timeoutMs: 30_000, env });
  blocker.close();
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    new RegExp(
      `^npm start: 127\\.0\\.0\\.1:${env.DEV_TCP_PORT} \\(TCP\\) is in use \\(EADDRINUSE\\); free it and run npm start again\n$`,
      "m",
    ),
  );
});

test("a second npm start says one is running; Ctrl-C stops the first and its children", { skip: SLOW_TRANSPORT }, async () => {
  const env = await devEnv();
  const first = spawnProcess(command, base, { env });
  await first.waitFor(/connected to server/, 30_000);
  const second = await run(command, base, { timeoutMs: 30_000, env });
  assert.equal(second.code, 1);
  assert.match(second.stderr, /npm start: a tunnel is already running \(pid \d+\)/);
  assert.equal(await rolesRunning(first.child.pid), true);
  first.child.kill("SIGINT");
  const code = await first.exited;
  if (!SIGNALLED_EXIT_CODE_HIDDEN) assert.equal(code, 0);
  assert.equal(await rolesRunning(first.child.pid), false, "no server or agent left behind");
});

/** `npm start` (scripts/dev.ts): one clear line and nothing left behind when it cannot start. */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { run, runtimeCommand, SIGNALLED_EXIT_CODE_HIDDEN, SLOW_TRANSPORT, spawnProcess } from "./harness.ts";

const [command, base] = runtimeCommand("scripts/dev.ts");

/** Whether any process runs a role script of this checkout (the ones npm start starts). */
async function rolesRunning(pid: number | undefined): Promise<boolean> {
  const { stdout } = await run("ps", ["-o", "pid=", "--ppid", String(pid)]);
  return stdout.toString().trim() !== "";
}

test("a taken port is one line naming it and exit 1, before anything is started", async () => {
  const blocker = net.createServer();
  const blocked = await new Promise<boolean>((resolve) => {
    blocker.once("error", () => resolve(false));
    blocker.listen(10443, "127.0.0.1", () => resolve(true));
  });
  const result = await run(command, base, { timeoutMs: 30_000 });
  if (blocked) blocker.close();
  assert.equal(result.code, 1);
  assert.match(result.stderr, /^npm start: 127\.0\.0\.1:10443 \(TCP\) is in use \(EADDRINUSE\); free it and run npm start again\n$/m);
});

test("a second npm start says one is running; Ctrl-C stops the first and its children", { skip: SLOW_TRANSPORT }, async () => {
  const first = spawnProcess(command, base);
  await first.waitFor(/connected to server/, 30_000);
  const second = await run(command, base, { timeoutMs: 30_000 });
  assert.equal(second.code, 1);
  assert.match(second.stderr, /npm start: a tunnel is already running \(pid \d+\)/);
  assert.equal(await rolesRunning(first.child.pid), true);
  first.child.kill("SIGINT");
  const code = await first.exited;
  if (!SIGNALLED_EXIT_CODE_HIDDEN) assert.equal(code, 0);
  assert.equal(await rolesRunning(first.child.pid), false, "no server or agent left behind");
});

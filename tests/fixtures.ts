/**
 * node:test fixtures shared by the test files that start processes: hooks registered here run
 * around the whole file.
 *
 * @module
 */
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import { after, before, type TestContext } from "node:test";
import { ROOT, type RoleProcess, runtimeCommand, startHttpTarget } from "./harness.ts";

/** Returns a function that remembers a process; all of them are killed after the file's tests. */
export function trackProcesses(): <T extends RoleProcess>(proc: T) => T {
  const started: RoleProcess[] = [];
  after(async () => {
    await Promise.all(started.map((proc) => proc.stop("SIGKILL")));
  });
  return (proc) => {
    started.push(proc);
    return proc;
  };
}

/**
 * The HTTP target as a process of its own (tests/fixtures/http-target.ts), in network namespace
 * `netns` if given: what it serves, a flood's 64 GiB say, then costs the test's event loop nothing.
 */
export async function httpTargetProcess(options: { netns?: string } = {}): Promise<{ port: number; stop(): void }> {
  const [command, base] = runtimeCommand("tests/fixtures/http-target.ts");
  const [file, args]: [string, string[]] = options.netns ? ["ip", ["netns", "exec", options.netns, command, ...base]] : [command, base];
  const target = spawn(file, args, { stdio: ["ignore", "pipe", "inherit"], cwd: ROOT });
  const port = await new Promise<number>((resolve, reject) => {
    target.stdout.once("data", (d: Buffer) => resolve(Number(/listening (\d+)/.exec(d.toString())?.[1])));
    target.once("exit", (code) => reject(new Error(`the HTTP target exited with ${code} before listening`)));
  });
  return { port, stop: () => target.kill("SIGKILL") };
}

/** A local HTTP target started before the file's tests and closed after them. */
export function httpTargetFixture(): { readonly port: number } {
  let target: Awaited<ReturnType<typeof startHttpTarget>> | undefined;
  before(async () => {
    target = await startHttpTarget();
  });
  after(async () => {
    await target?.close();
  });
  return {
    get port() {
      if (!target) throw new Error("the HTTP target starts in before()");
      return target.port;
    },
  };
}

/** Skips the test, printing why (bun test does not show a skip's reason). */
export function skip(t: TestContext, reason: string): void {
  console.log(`skipped "${t.name}": ${reason}`);
  t.skip(reason);
}

/** True when `command --version` runs. */
export function commandExists(command: string): boolean {
  try {
    execFileSync(command, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Resident memory of process `pid` in MB, from /proc. */
export function rssMb(pid: number | undefined): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
}

/**
 * Two connected loopback TCP sockets (half-open allowed) and a function that closes their listener:
 * the real sockets a unit test of the pipe or the read-ahead runs on.
 */
export async function socketPair(): Promise<[net.Socket, net.Socket, () => void]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true });
  return [client, await accepted, () => server.close()];
}

/**
 * Start-up time of each role to ready, median of several runs: the server until it listens, an
 * agent until it is connected to a running server. As scripts (`bun run`) and as the compiled
 * binaries of `npm run build` when dist/ has them.
 *
 * Usage: bun run scripts/startup.ts [runs]
 *
 * @module
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { agentArgs, ROOT, type RoleProcess, runtimeCommand, scratchCerts, serverTlsArgs, spawnProcess } from "./roles.ts";

const runs = Number(process.argv[2] ?? 7);
const certs = scratchCerts();
const serverArgs = ["--listen-tcp", "127.0.0.1:0", "--listen-quic", "127.0.0.1:0", ...serverTlsArgs(certs)];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timeToReady(start: () => RoleProcess, ready: RegExp): Promise<[number, RoleProcess, RegExpMatchArray]> {
  const began = performance.now();
  const proc = start();
  const match = await proc.waitFor(ready, 20_000);
  return [performance.now() - began, proc, match];
}

const commands: Record<string, (role: string) => [string, string[]]> = {
  "bun run": (role) => runtimeCommand(`${role}.ts`),
};
// The multi-call binary of `npm run build` for this machine, run with the role as first argument.
const binary = join(ROOT, "dist", process.arch === "arm64" ? "linux-arm64" : "linux-x64", "quic-tunnel");
if (existsSync(binary)) commands.binary = (role) => [binary, [role]];
for (const [way, command] of Object.entries(commands)) {
  const times: Record<string, number[]> = { server: [], agent: [], "agent-tcp": [] };
  for (let i = 0; i < runs; i++) {
    const [serverCommand, serverBase] = command("server");
    const [serverMs, server, match] = await timeToReady(
      () => spawnProcess(serverCommand, [...serverBase, ...serverArgs]),
      /quic=127\.0\.0\.1:(\d+)/,
    );
    times.server.push(serverMs);
    for (const role of ["agent", "agent-tcp"]) {
      const [agentCommand, agentBase] = command(role);
      const extra = role === "agent-tcp" ? ["--upstream", "127.0.0.1:9"] : [];
      const [agentMs, agent] = await timeToReady(
        () => spawnProcess(agentCommand, [...agentBase, ...agentArgs(`127.0.0.1:${match[1]}`, certs), ...extra]),
        /connected to server/,
      );
      times[role].push(agentMs);
      await agent.stop("SIGKILL");
    }
    await server.stop("SIGKILL");
  }
  const summary = Object.entries(times).map(([role, xs]) => `${role} ${median(xs).toFixed(0)} ms`);
  console.log(`${way.padEnd(8)} start-up to ready, median of ${runs}: ${summary.join(", ")}`);
}
process.exit(0);

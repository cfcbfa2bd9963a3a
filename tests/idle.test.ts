/**
 * Idle tunnels cost nothing: `kubectl exec`, `logs -f` and port-forwards hold tunnels open for
 * hours with nothing moving, and a role must not do work per tunnel while they wait (no polling of
 * every stream, no timer per tunnel that fires while nothing happens).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import type net from "node:net";
import { after, test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import { ENGINES, openTunnel, type RoleProcess, SLOW_TRANSPORT, startAgent, startServer } from "./harness.ts";
import { pause } from "./wait.ts";

const TUNNELS = 2000;
const HOLD_MS = 20_000;
/** Linux's USER_HZ: /proc reports CPU time in these ticks. */
const TICKS_PER_SECOND = 100;

const track = trackProcesses();
const opened: net.Socket[] = [];
let holder: ChildProcess | undefined;
after(() => {
  for (const socket of opened) socket.destroy();
  holder?.kill("SIGKILL");
});

/** CPU seconds `role` has used so far (user and system). */
function cpuSeconds(role: RoleProcess): number {
  const fields = readFileSync(`/proc/${role.child.pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** A target that accepts connections and holds them, saying nothing, in a process of its own (its sockets are not ours to count). */
async function holdingTarget(): Promise<number> {
  const script = `
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
`;
  holder = spawn("python3", ["-c", script], { stdio: ["ignore", "pipe", "inherit"] });
  return Number(await new Promise<string>((resolve) => holder?.stdout?.once("data", (data) => resolve(String(data)))));
}

test(`${TUNNELS} idle tunnels per engine held for ${HOLD_MS / 1000} s cost each role under 1.5% of a core (3% on node-quic's 20 connections)`, {
  skip: SLOW_TRANSPORT,
}, async () => {
  const targetPort = await holdingTarget();
  const pairs = await Promise.all(
    ENGINES.map(async (engine) => {
      const server = track(await startServer({ engine }));
      const agent = track(await startAgent(server.quicPort, { engine }));
      return { engine, server, agent };
    }),
  );
  for (const { server } of pairs) {
    for (let i = 0; i < TUNNELS; i += 100) {
      opened.push(...(await Promise.all(Array.from({ length: 100 }, () => openTunnel(server.tcpPort, targetPort)))));
    }
  }
  // Let what opening them set off settle (acks, credit, collection) before the idle time is taken.
  await pause(2_000);
  const before = pairs.map(({ server, agent }) => ({ server: cpuSeconds(server), agent: cpuSeconds(agent) }));
  const started = performance.now();
  await pause(HOLD_MS);
  const seconds = (performance.now() - started) / 1000;
  const usage = pairs.map(({ engine, server, agent }, i) => ({
    engine,
    server: (100 * (cpuSeconds(server) - before[i].server)) / seconds,
    agent: (100 * (cpuSeconds(agent) - before[i].agent)) / seconds,
  }));
  const figures = usage.map((u) => `${u.engine}: server ${u.server.toFixed(2)}%, agent ${u.agent.toFixed(2)}%`).join("; ");
  process.stderr.write(`${TUNNELS} idle tunnels for ${seconds.toFixed(1)} s: ${figures}\n`);
  for (const u of usage) {
    // node-quic spreads 2,000 tunnels over 20 connections (Bun takes 100 streams on each), and
    // each costs Bun's lsquic some 0.04-0.08% of a core at rest whatever its tunnels do.
    const bound = u.engine === "node-quic" ? 3 : 1.5;
    assert.ok(u.server < bound && u.agent < bound, `idle tunnels cost a ${u.engine} role under ${bound}% of a core: ${figures}`);
  }
});

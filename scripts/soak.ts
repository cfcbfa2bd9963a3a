/**
 * Soak: bursts of concurrent tunnels (each a CONNECT, a request and a response) against a server and
 * an agent, printing their RSS and open descriptors after each burst, so that a leak shows as a
 * trend rather than as the noise of one measurement. Bounded in count; stops by itself.
 *
 * Usage: bun run scripts/soak.ts [bursts=24] [tunnels per burst=1000]
 *
 * @module
 */
import { readdirSync } from "node:fs";
import { startAgent, startServer, statusMb } from "./roles.ts";
import { rawExchange, startHttpTarget } from "./traffic.ts";

const bursts = Number(process.argv[2] ?? 24);
const perBurst = Number(process.argv[3] ?? 1000);
const rssMb = (pid: number | undefined) => Math.round(statusMb(pid, "VmRSS"));
const fds = (pid: number | undefined) => readdirSync(`/proc/${pid}/fd`).length;

const target = await startHttpTarget();
const server = await startServer();
const agent = await startAgent(server.quicPort);
const request = `CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`;
let failures = 0;
for (let burst = 1; burst <= bursts; burst++) {
  const replies = await Promise.all(Array.from({ length: perBurst }, () => rawExchange(server.tcpPort, request).catch(() => "")));
  failures += replies.filter((reply) => !reply.includes("hello through the tunnel")).length;
  await new Promise((resolve) => setTimeout(resolve, 300));
  console.log(
    `burst ${burst}: ${burst * perBurst} tunnels, ${failures} failed; server ${rssMb(server.child.pid)} MB ${fds(server.child.pid)} fds; agent ${rssMb(agent.child.pid)} MB ${fds(agent.child.pid)} fds`,
  );
}
await Promise.all([server.stop(), agent.stop()]);
await target.close();
process.exit(failures === 0 ? 0 : 1);

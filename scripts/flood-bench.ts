/**
 * Clients that never read, ours beside the Go reference in one run: for each path a server and an
 * agent, and a Python process that opens `--clients` tunnels each asking for `--mib` MiB with a
 * 4 KiB receive buffer, holds them `--hold` seconds without reading, then closes them. Measured per
 * path: both roles' RSS idle, at the peak (sampled every 50 ms) and 2 s after the clients have gone;
 * their CPU over the flood; and fresh 64 KiB tunnels during the flood and after it (the time to the
 * whole answer, or how they failed: the reference never closes a tunnel whose target has).
 *
 * Run with --help for options.
 *
 * @module
 */
import net from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  agentArgs,
  cpuSeconds,
  type RoleProcess,
  scratchCerts,
  spawnProcess,
  splitRoleArgs,
  startAgent,
  startReferenceServer,
  startServer,
  statusMb,
} from "./roles.ts";
import { nonReadingClients, startHttpTarget } from "./traffic.ts";

const USAGE = `Usage: bun run scripts/flood-bench.ts [options] [-- flags for our server and agent]
       npm run bench:flood -- [options] [-- flags for our server and agent]

A flood of clients that never read, for each path in one run.

Options:
  --paths LIST       comma-separated subset of quiche,node-quic,reference (default: all there are)
  --reference DIR    the Go reference's quic-server and quic-client (default: $QUIC_TUNNEL_REFERENCE)
  --clients N        clients that never read (default 1000)
  --mib N            MiB each asks for (default 64)
  --hold S           seconds they hold their tunnels (default 6)
  --max-buffered S   our roles' --max-buffered (default 32MiB)
  -h, --help         print this help
`;

const { own, roles: roleArgs } = splitRoleArgs();
const { values } = parseArgs({
  args: own,
  options: {
    paths: { type: "string" },
    reference: { type: "string", default: process.env.QUIC_TUNNEL_REFERENCE },
    clients: { type: "string", default: "1000" },
    mib: { type: "string", default: "64" },
    hold: { type: "string", default: "6" },
    "max-buffered": { type: "string", default: "32MiB" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const paths = (values.paths ?? (values.reference ? "quiche,node-quic,reference" : "quiche,node-quic")).split(",");
if (paths.includes("reference") && !values.reference) throw new Error("--paths reference needs --reference DIR");

const ANSWER_BYTES = 65536;

/**
 * A fresh tunnel fetching 64 KiB: ms to the whole answer (the reference never closes the tunnel),
 * or how it failed.
 */
function freshTunnel(proxyPort: number, targetPort: number): Promise<string> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = net.connect({ port: proxyPort, host: "127.0.0.1", allowHalfOpen: true });
    let text = "";
    let error = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const body = text.indexOf("\r\n\r\n", text.indexOf("\r\n\r\n") + 4) + 4;
      if (body >= 4 && text.length - body >= ANSWER_BYTES) {
        resolve(`${(performance.now() - started).toFixed(0)} ms`);
        socket.destroy();
      }
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.setTimeout(5_000, () => {
      error = "no whole answer within 5 s";
      socket.destroy();
    });
    socket.on("close", () => resolve(`failed (${text.length} bytes, ${error || "closed"})`));
    socket.write(`CONNECT 127.0.0.1:${targetPort} HTTP/1.1\r\n\r\nGET /bytes/${ANSWER_BYTES} HTTP/1.0\r\n\r\n`);
  });
}

/** A server and an agent of `path`, ready to carry tunnels. */
async function startPath(path: string): Promise<{ server: RoleProcess; agent: RoleProcess; proxyPort: number }> {
  const certs = scratchCerts();
  if (path === "reference") {
    const dir = values.reference as string;
    const { server, tcpPort, quicPort } = await startReferenceServer(dir, certs);
    const agent = spawnProcess(join(dir, "quic-client"), agentArgs(`127.0.0.1:${quicPort}`, certs));
    // The reference's agent says nothing on connecting: give it the time it takes here (well under 1 s).
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    return { server, agent, proxyPort: tcpPort };
  }
  const engine = path as "quiche" | "node-quic";
  const args = ["--max-buffered", values["max-buffered"] as string, ...roleArgs];
  const server = await startServer({ engine, args });
  const agent = await startAgent(server.quicPort, { engine, args });
  return { server, agent, proxyPort: server.tcpPort };
}

const target = await startHttpTarget();
const rows: string[] = [];
for (const path of paths) {
  const { server, agent, proxyPort } = await startPath(path);
  const pids = { server: server.child.pid, agent: agent.child.pid };
  const first = await freshTunnel(proxyPort, target.port);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const idle = { server: statusMb(pids.server, "VmRSS"), agent: statusMb(pids.agent, "VmRSS") };
  const peak = { ...idle };
  const sampler = setInterval(() => {
    for (const role of ["server", "agent"] as const) peak[role] = Math.max(peak[role], statusMb(pids[role], "VmRSS"));
  }, 50);
  const cpuBefore = { server: cpuSeconds(pids.server), agent: cpuSeconds(pids.agent) };
  const clients = await nonReadingClients(proxyPort, { target: target.port, count: Number(values.clients), mib: Number(values.mib) });
  const during: string[] = [];
  const probing = (async () => {
    for (let i = 0; i < 5; i++) {
      during.push(await freshTunnel(proxyPort, target.port));
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, Number(values.hold) * 1000));
  await clients.close();
  await probing;
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  clearInterval(sampler);
  const cpu = { server: cpuSeconds(pids.server) - cpuBefore.server, agent: cpuSeconds(pids.agent) - cpuBefore.agent };
  const gone = { server: statusMb(pids.server, "VmRSS"), agent: statusMb(pids.agent, "VmRSS") };
  const afterwards = await freshTunnel(proxyPort, target.port);
  const mb = (figures: Record<"server" | "agent", number>) => `${figures.server.toFixed(0)} / ${figures.agent.toFixed(0)}`;
  rows.push(
    `| ${path} | ${mb(idle)} | ${mb(peak)} | ${mb(gone)} | ${cpu.server.toFixed(2)} / ${cpu.agent.toFixed(2)} | ${during.join(", ")} | ${afterwards} (before: ${first}) |`,
  );
  await Promise.all([server.stop(), agent.stop()]);
}
await target.close();
console.log(
  `\n${values.clients} clients that never read ${values.mib} MiB each, held ${values.hold} s; ours at --max-buffered ${values["max-buffered"]}`,
);
console.log(
  "| path | RSS idle server / agent MB | peak | 2 s after they left | CPU s over the flood | fresh tunnels during | fresh tunnel after |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const row of rows) console.log(row);
process.exit(0);

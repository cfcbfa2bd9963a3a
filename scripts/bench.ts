/**
 * Benchmark of the full path curl -> server -> agent -> local HTTP target over loopback, beside a
 * direct TCP transfer and a plain one-process CONNECT relay measured in the same run.
 *
 * Usage: bun run scripts/bench.ts [--runs 5] [--mib 256] [--tunnels 300] [--concurrent 200] [-- server/agent flags]
 * Prints medians of interleaved runs, ratios, CONNECT-to-200 latency and peak RSS (VmHWM).
 *
 * @module
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT, run, runtimeCommand, startAgent, startHttpTarget, startServer } from "../tests/harness.ts";

const split = process.argv.indexOf("--");
const { values } = parseArgs({
  args: process.argv.slice(2, split < 0 ? undefined : split),
  options: {
    runs: { type: "string", default: "5" },
    mib: { type: "string", default: "256" },
    tunnels: { type: "string", default: "300" },
    concurrent: { type: "string", default: "200" },
  },
});
const roleArgs = split < 0 ? [] : process.argv.slice(split + 1);
const runs = Number(values.runs);
const mib = Number(values.mib);

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const statusMb = (pid: number | undefined, field: string) => {
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) / 1024 : Number.NaN;
};

const target = await startHttpTarget();
const [command, base] = runtimeCommand("scripts/connect-relay.ts");
const relay = spawn(command, [...base, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"], cwd: ROOT });
const relayPort = await new Promise<number>((resolve) =>
  relay.stdout.once("data", (d: Buffer) => resolve(Number(/listening (\d+)/.exec(d.toString())?.[1]))),
);
const server = await startServer({ args: roleArgs });
const agent = await startAgent(server.quicPort, { args: roleArgs });
// VmHWM is the kernel's peak RSS, which counts the runtime executable's shared code pages (about
// 35 MB for Bun); RssAnon is the process's own memory, sampled here for its peak.
const peakPrivate = new Map<number, number>();
const sampler = setInterval(() => {
  for (const pid of [server.child.pid, agent.child.pid, relay.pid]) {
    if (pid !== undefined) peakPrivate.set(pid, Math.max(peakPrivate.get(pid) ?? 0, statusMb(pid, "RssAnon")));
  }
}, 50);
const upload = join(tmpdir(), `quic-tunnel-bench-${process.pid}.bin`);
writeFileSync(upload, Buffer.alloc(mib << 20, 0x5a));

async function transfer(proxyPort: number | undefined, direction: "down" | "up"): Promise<number> {
  const proxy = proxyPort ? ["-p", "--proxy", `127.0.0.1:${proxyPort}`] : [];
  const args =
    direction === "down"
      ? [...proxy, "-sS", "-o", "/dev/null", "-w", "%{speed_download}", `http://127.0.0.1:${target.port}/mib/${mib}`]
      : [
          ...proxy,
          "-sS",
          "-o",
          "/dev/null",
          "-H",
          "Expect:",
          "--data-binary",
          `@${upload}`,
          "-w",
          "%{speed_upload}",
          `http://127.0.0.1:${target.port}/`,
        ];
  const result = await run("curl", args, { timeoutMs: 120_000 });
  if (result.code !== 0) throw new Error(`curl failed (${result.code}): ${result.stderr}`);
  return Number(result.stdout.toString()) / (1 << 20);
}

function connectTime(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = net.connect({ port, host: "127.0.0.1", noDelay: true }, () => {
      socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\nHost: 127.0.0.1:${target.port}\r\n\r\n`);
    });
    socket.once("data", (chunk) => {
      const elapsed = performance.now() - started;
      socket.destroy();
      if (chunk.toString().startsWith("HTTP/1.1 200")) resolve(elapsed);
      else reject(new Error(`CONNECT answered ${chunk.toString().split("\r\n")[0]}`));
    });
    socket.once("error", reject);
  });
}

function tunnelRequest(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`);
    });
    let text = "";
    socket.on("data", (chunk) => {
      text += chunk.toString();
    });
    socket.on("close", () => resolve(text.includes("hello through the tunnel")));
    socket.on("error", () => resolve(false));
    socket.setTimeout(20_000, () => socket.destroy());
  });
}

const paths = { direct: undefined, relay: relayPort, tunnel: server.tcpPort } as const;
const speeds = {
  down: { direct: [] as number[], relay: [] as number[], tunnel: [] as number[] },
  up: { direct: [] as number[], relay: [] as number[], tunnel: [] as number[] },
};
for (let i = 0; i < runs; i++) {
  for (const direction of ["down", "up"] as const) {
    for (const name of ["direct", "relay", "tunnel"] as const) {
      speeds[direction][name].push(await transfer(paths[name], direction));
    }
  }
}
const latencies: number[] = [];
for (let i = 0; i < Number(values.tunnels); i++) latencies.push(await connectTime(server.tcpPort));
const relayLatencies: number[] = [];
for (let i = 0; i < Number(values.tunnels); i++) relayLatencies.push(await connectTime(relayPort));
const concurrent = await Promise.all(Array.from({ length: Number(values.concurrent) }, () => tunnelRequest(server.tcpPort)));

console.log(
  `\nBulk transfer, ${mib} MiB, median of ${runs} interleaved runs (MiB/s), runtime ${process.versions.bun ? `bun ${process.versions.bun}` : `node ${process.version}`}`,
);
console.log("direction   direct TCP   plain relay   tunnel   tunnel/relay   runs(tunnel)");
for (const direction of ["down", "up"] as const) {
  const s = speeds[direction];
  console.log(
    `${(direction === "down" ? "download" : "upload").padEnd(12)}${median(s.direct).toFixed(0).padStart(10)}${median(s.relay).toFixed(0).padStart(14)}${median(s.tunnel).toFixed(1).padStart(9)}${(median(s.tunnel) / median(s.relay)).toFixed(3).padStart(15)}   ${s.tunnel.map((x) => x.toFixed(0)).join(" ")}`,
  );
}
console.log(
  `\nCONNECT to 200 over ${latencies.length} sequential tunnels: p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms (plain relay p50 ${percentile(relayLatencies, 50).toFixed(2)} ms, p99 ${percentile(relayLatencies, 99).toFixed(2)} ms)`,
);
console.log(
  `${concurrent.length} concurrent tunnels: ${concurrent.filter(Boolean).length} ok, ${concurrent.filter((ok) => !ok).length} errors`,
);
clearInterval(sampler);
const memory = (pid: number | undefined) =>
  `${statusMb(pid, "VmHWM").toFixed(1)} MB peak RSS (${(peakPrivate.get(pid ?? -1) ?? Number.NaN).toFixed(1)} MB private)`;
console.log(`Memory: server ${memory(server.child.pid)}, agent ${memory(agent.child.pid)}, plain relay ${memory(relay.pid)}`);

await Promise.all([server.stop(), agent.stop()]);
relay.kill();
await target.close();
process.exit(0);

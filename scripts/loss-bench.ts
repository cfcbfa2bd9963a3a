/**
 * The tunnel over a lossy path, ours beside the Go reference in one run: each path gets its own
 * server, a userspace relay that drops datagrams at random both ways (tests/fixtures/lossy-relay.ts)
 * and an agent that dials through it. Measured per path:
 *
 * - short tunnels (CONNECT + HTTP/1.0 GET of 20 KB, read to its Content-Length, since the
 *   reference never half-closes) at `--loss`: wall time, how each ended, the datagrams the relay
 *   saw (forwarded and dropped) per tunnel;
 * - a bulk download through curl at each of `--bulk-loss`: MiB/s and whether its sha256 matched.
 *
 * The clients are a Python process, outside any JavaScript event loop. Run with --help for options.
 *
 * @module
 */
import net from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startLossyRelay } from "../tests/harness.ts";
import {
  agentArgs,
  type RoleProcess,
  run,
  scratchCerts,
  spawnProcess,
  splitRoleArgs,
  startAgent,
  startReferenceServer,
  startServer,
} from "./roles.ts";
import { expectedSha256, sha256, startHttpTarget } from "./traffic.ts";

const USAGE = `Usage: bun run scripts/loss-bench.ts [options] [-- flags for our server and agent]
       npm run bench:loss -- [options] [-- flags for our server and agent]

Short tunnels and bulk downloads through a lossy UDP relay, for each path in one run.

Options:
  --paths LIST       comma-separated subset of quiche,node-quic,reference (default: all there are)
  --reference DIR    the Go reference's quic-server and quic-client (default: $QUIC_TUNNEL_REFERENCE)
  --loss P           loss each way for the short tunnels (default 0.1)
  --tunnels N        short tunnels (default 2000)
  --concurrency N    short tunnels at a time (default 20)
  --bulk-loss LIST   loss each way for the downloads, comma-separated (default 0.01,0.05)
  --mib N            MiB per download (default 64)
  --bottleneck K:B   then one download, without loss, through a K kbit/s link behind a B-byte
                     tail-drop queue each way (default 50000:65536; "" skips it): MiB/s and the
                     share of datagrams the full queue dropped
  -h, --help         print this help

Flags after a lone -- go to our server and agent, e.g. -- --cc bbr.
`;

const { own, roles: roleArgs } = splitRoleArgs();
const { values } = parseArgs({
  args: own,
  options: {
    paths: { type: "string" },
    reference: { type: "string", default: process.env.QUIC_TUNNEL_REFERENCE },
    loss: { type: "string", default: "0.1" },
    tunnels: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "20" },
    "bulk-loss": { type: "string", default: "0.01,0.05" },
    mib: { type: "string", default: "64" },
    bottleneck: { type: "string", default: "50000:65536" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const loss = Number(values.loss);
const tunnels = Number(values.tunnels);
const concurrency = Number(values.concurrency);
const bulkLosses = (values["bulk-loss"] ?? "").split(",").filter(Boolean).map(Number);
const mib = Number(values.mib);
const [bottleneckKbps, queueBytes] = (values.bottleneck ?? "").split(":").map(Number);
const paths = (values.paths ?? (values.reference ? "quiche,node-quic,reference" : "quiche,node-quic")).split(",");
if (paths.includes("reference") && !values.reference) throw new Error("--paths reference needs --reference DIR");

/**
 * The short-tunnel client: `count` tunnels, `concurrency` threads; each reads the CONNECT answer
 * and the GET answer to its Content-Length, then closes. Prints the outcomes and the wall time.
 */
const SHORT_TUNNELS = `
import json, socket, sys, threading, time
port, target, count, concurrency, size = (int(a) for a in sys.argv[1:6])
outcomes = {"ok": 0, "refused": 0, "reset": 0, "truncated": 0, "hang": 0}
lock = threading.Lock()
left = [count]
def one():
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\nGET /bytes/%d HTTP/1.0\\r\\n\\r\\n" % (target, size))
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return "hang"
            except OSError:
                return "reset"
            if not chunk:
                break
            data += chunk
            head = data.find(b"\\r\\n\\r\\n", 19)
            if data.startswith(b"HTTP/1.1 200") and head > 0 and len(data) - head - 4 >= size:
                return "ok"
        return "truncated" if data.startswith(b"HTTP/1.1 200") else "refused"
    finally:
        s.close()
def worker():
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        outcome = one()
        with lock:
            outcomes[outcome] += 1
started = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"seconds": time.perf_counter() - started, "outcomes": outcomes}))
`;
const BODY_BYTES = 20_000;

interface PathResult {
  name: string;
  short?: { seconds: number; outcomes: Record<string, number>; forwarded: number; dropped: number };
  bulk: { loss: number; mibPerSecond: number; intact: boolean }[];
  bottleneck?: { mibPerSecond: number; intact: boolean; overflowedShare: number };
}

/** Downloads `mib` MiB through the tunnel server at `tcpPort`: MiB/s, and whether it is intact. */
async function download(tcpPort: number): Promise<{ mibPerSecond: number; intact: boolean }> {
  const t0 = performance.now();
  const down = await run(
    "curl",
    ["-sS", "--max-time", "300", "-p", "--proxy", `127.0.0.1:${tcpPort}`, `http://127.0.0.1:${target.port}/mib/${mib}`],
    {
      timeoutMs: 310_000,
    },
  );
  const seconds = (performance.now() - t0) / 1000;
  const intact = down.code === 0 && sha256(down.stdout) === expectedSha256(mib);
  return { mibPerSecond: intact ? mib / seconds : 0, intact };
}

const certs = scratchCerts();
const target = await startHttpTarget();
const stops: Array<() => Promise<unknown>> = [];
const results: PathResult[] = [];
try {
  for (const name of paths) {
    const started = await startPathServer(name);
    stops.push(() => started.server.stop());
    const relay = await startLossyRelay(started.quicPort, { loss: 0 });
    stops.push(() => relay.stop());
    const agent = await startPathAgent(name, relay.port);
    stops.push(() => agent.stop());
    await waitForTunnel(started.tcpPort);
    const result: PathResult = { name, bulk: [] };
    await relay.setLoss(loss);
    const before = await relay.stats();
    const short = await run(
      "python3",
      ["-c", SHORT_TUNNELS, String(started.tcpPort), String(target.port), String(tunnels), String(concurrency), String(BODY_BYTES)],
      { timeoutMs: 600_000 },
    );
    const after = await relay.stats();
    if (short.code !== 0) throw new Error(`${name}: the short-tunnel client failed: ${short.stderr}`);
    result.short = {
      ...JSON.parse(short.stdout.toString()),
      forwarded: after.forwarded - before.forwarded,
      dropped: after.dropped - before.dropped,
    };
    process.stderr.write(`${name}: short tunnels ${JSON.stringify(result.short)}\n`);
    for (const bulkLoss of bulkLosses) {
      await relay.setLoss(bulkLoss);
      const { mibPerSecond, intact } = await download(started.tcpPort);
      result.bulk.push({ loss: bulkLoss, mibPerSecond, intact });
      process.stderr.write(`${name}: ${mib} MiB at ${bulkLoss * 100}% loss: ${mibPerSecond.toFixed(1)} MiB/s, intact ${intact}\n`);
    }
    if (bottleneckKbps > 0) {
      await relay.setLoss(0);
      await relay.setBottleneck(bottleneckKbps, queueBytes);
      const before = await relay.stats();
      const { mibPerSecond, intact } = await download(started.tcpPort);
      const after = await relay.stats();
      const overflowed = after.overflowed - before.overflowed;
      const overflowedShare = overflowed / (after.forwarded - before.forwarded);
      result.bottleneck = { mibPerSecond, intact, overflowedShare };
      process.stderr.write(
        `${name}: ${mib} MiB through the bottleneck: ${mibPerSecond.toFixed(1)} MiB/s, intact ${intact}, ${overflowed} datagrams overflowed\n`,
      );
    }
    results.push(result);
    for (const stop of stops.splice(0).reverse()) await stop();
  }
} finally {
  for (const stop of stops.reverse()) await stop().catch(() => {});
  await target.close();
}

console.log(
  `\nloss bench: ${tunnels} short tunnels (${BODY_BYTES} B answers, ${concurrency} at a time) at ${loss * 100}% loss each way${roleArgs.length > 0 ? `; our roles with ${roleArgs.join(" ")}` : ""}`,
);
console.log("path        seconds  ok     failed  datagrams/tunnel  dropped   bulk MiB/s (loss)");
for (const r of results) {
  const s = r.short;
  if (!s) continue;
  const failed = tunnels - s.outcomes.ok;
  const bulk = r.bulk.map((b) => `${b.intact ? b.mibPerSecond.toFixed(1) : "FAILED"} (${b.loss * 100}%)`).join(", ");
  console.log(
    `${r.name.padEnd(11)} ${s.seconds.toFixed(1).padStart(7)}  ${String(s.outcomes.ok).padEnd(6)} ${String(failed).padEnd(7)} ${((s.forwarded + s.dropped) / tunnels).toFixed(1).padStart(16)}  ${String(s.dropped).padEnd(8)}  ${bulk}`,
  );
  if (failed > 0) console.log(`            outcomes ${JSON.stringify(s.outcomes)}`);
}
if (bottleneckKbps > 0) {
  console.log(`\n${mib} MiB, no loss, through a ${bottleneckKbps / 1000} Mbit/s link behind a ${queueBytes}-byte tail-drop queue each way`);
  console.log("path        MiB/s  queue drops (share of datagrams)");
  for (const r of results) {
    const b = r.bottleneck;
    if (b)
      console.log(
        `${r.name.padEnd(11)} ${(b.intact ? b.mibPerSecond.toFixed(1) : "FAILED").padStart(5)}  ${(b.overflowedShare * 100).toFixed(2)}%`,
      );
  }
}

/** The path's server: ours (with the engine named) or the reference's binary. */
async function startPathServer(name: string): Promise<{ server: RoleProcess; tcpPort: number; quicPort: number }> {
  if (name !== "reference") {
    const server = await startServer({ certs, engine: name as "quiche" | "node-quic", args: roleArgs });
    return { server, tcpPort: server.tcpPort, quicPort: server.quicPort };
  }
  return startReferenceServer(values.reference as string, certs);
}

function startPathAgent(name: string, port: number): Promise<RoleProcess> | RoleProcess {
  if (name !== "reference") return startAgent(port, { certs, engine: name as "quiche" | "node-quic", args: roleArgs });
  return spawnProcess(join(values.reference as string, "quic-client"), agentArgs(`127.0.0.1:${port}`, certs));
}

/** Tries a tunnel until one answers (the reference's agent logs nothing when it connects). */
async function waitForTunnel(port: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await answers(port))) {
    if (Date.now() > deadline) throw new Error(`no tunnel through port ${port} within 15 s`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** True once a tunnel through `port` brings the target's greeting (the reference never closes it first). */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    let text = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(3_000, () => done(false));
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (text.includes("hello through the tunnel")) done(true);
    });
    socket.on("error", () => done(false));
    socket.on("close", () => done(text.includes("hello through the tunnel")));
    socket.write(`CONNECT 127.0.0.1:${target.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`);
  });
}

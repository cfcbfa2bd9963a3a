/**
 * Benchmark of the full path curl -> server -> agent -> local HTTP target over loopback, for each
 * way of carrying it, all measured in ONE run and interleaved (every run visits every path, in a
 * rotating order, so that a noisy machine hurts them alike):
 *
 * - `quiche`     our server.ts + agent.ts with `--quic-engine quiche`
 * - `node-quic`  our server.ts + agent.ts with `--quic-engine node-quic` (Bun's node:quic)
 * - `tcp`        our server.ts + agent.ts over the TCP transport (`--transport tcp`, HTTP/2 on TLS)
 * - `reference`  the Go reference (quic-server + quic-client from `--reference DIR`)
 * - `relay`      scripts/connect-relay.ts, a plain one-process CONNECT relay (no QUIC)
 * - `direct`     curl straight to the target (no proxy)
 *
 * Measured: bulk download and upload through curl (MiB/s, median of --runs), CONNECT-to-200
 * latency over sequential tunnels (p50, p99), bursts of concurrent short tunnels (wall time,
 * errors), peak RSS (VmHWM) and sampled peak private memory (RssAnon) of every server and agent,
 * and the CPU time each process spent per GiB moved. The table gives ratios against the reference.
 *
 * Run `bun run scripts/bench.ts --help` for the options. Every process it starts is stopped and its
 * temporary directory (certificates, upload file) is removed at exit, on error and on Ctrl-C.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureDevCerts } from "./dev-certs.ts";
import {
  agentArgs,
  cpuSeconds,
  ROOT,
  type RoleProcess,
  run,
  runtimeCommand,
  spawnProcess,
  splitRoleArgs,
  startAgent,
  startReferenceServer,
  startServer,
  statusMb,
} from "./roles.ts";
import { connectTimes } from "./traffic.ts";

// ---------------------------------------------------------------------------------------------
// The HTTP target, run as a child process of the benchmark (this same file, selected by an
// environment variable) so that serving 256 MiB never shares an event loop with the clients that
// time CONNECT latency. Its listen backlog is 4096: a burst of hundreds of tunnels must not lose
// SYNs at the target (python's http.server has a backlog of 5, which costs 1 s retransmits).
// ---------------------------------------------------------------------------------------------
const TARGET_ENV = "QUIC_TUNNEL_BENCH_TARGET";
const TARGET_BACKLOG = 4096;
const HELLO = Buffer.from("hello through the tunnel\n");
function serveTarget(): void {
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
  const target = http.createServer((req, res) => {
    if (req.method === "POST" || req.method === "PUT") {
      let bytes = 0;
      req.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
      });
      req.on("end", () => res.end(`${bytes}\n`));
      return;
    }
    const mib = Number(/^\/mib\/(\d+)$/.exec(req.url ?? "")?.[1] ?? 0);
    if (!mib) {
      // With its length, so a client knows the answer is complete without waiting for the close.
      res.writeHead(200, { "content-length": HELLO.length, "content-type": "text/plain" }).end(HELLO);
      return;
    }
    res.writeHead(200, { "content-length": mib * block.length, "content-type": "application/octet-stream" });
    let sent = 0;
    const pump = () => {
      while (sent < mib) {
        sent++;
        if (!res.write(block)) return void res.once("drain", pump);
      }
      res.end();
    };
    pump();
  });
  target.listen({ port: 0, host: "127.0.0.1", backlog: TARGET_BACKLOG }, () => {
    process.stdout.write(`listening ${(target.address() as net.AddressInfo).port}\n`);
  });
  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------
const USAGE = `Usage: bun run scripts/bench.ts [options] [-- flags for our server and agent]
       npm run bench -- [options] [-- flags for our server and agent]

Measures, in one run and interleaved, our tunnel with --quic-engine quiche, with
--quic-engine node-quic and over the TCP transport (--transport tcp), the Go reference
(with --reference), a plain one-process CONNECT relay (scripts/connect-relay.ts) and direct TCP, all on loopback:
  bulk download and upload through curl -p --proxy (MiB/s, median of the runs),
  CONNECT-to-200 latency over sequential tunnels (p50, p99),
  bursts of concurrent short tunnels (CONNECT + HTTP/1.0 GET; wall time, errors),
  peak RSS (VmHWM), peak private memory (RssAnon, sampled) and CPU s/GiB of each server and agent.

Options:
  --runs N          interleaved runs of the transfers and bursts (default 5)
  --mib N           MiB per transfer (default 256)
  --tunnels N       sequential tunnels for the latency (default 300)
  --concurrent N    tunnels per concurrent burst (default 200)
  --reference DIR   directory with the Go reference's quic-server and quic-client, built as it
                    ships (quic-go v0.42.0, Go 1.22); the table names the quic-go it was built with
                    (default: the environment variable QUIC_TUNNEL_REFERENCE; off if neither)
  --paths LIST      comma-separated subset of quiche,node-quic,tcp,reference,relay,direct (default all)
  --json FILE       also write every raw measurement to FILE as JSON
  -h, --help        print this help

Flags after a lone -- go to our server and agent (both engines), e.g. -- --cc bbr (a flag an engine cannot honour makes its roles exit).
Goals printed against the reference: download and upload >= 1.5x, CONNECT p50 <= 1x,
concurrent wall <= 1.5x with 0 errors, peak RSS <= 64 MB per role.
`;

type PathName = "quiche" | "node-quic" | "tcp" | "reference" | "relay" | "direct";
const ALL_PATHS: PathName[] = ["quiche", "node-quic", "tcp", "reference", "relay", "direct"];

interface Options {
  runs: number;
  mib: number;
  tunnels: number;
  concurrent: number;
  reference?: string;
  paths: PathName[];
  json?: string;
  roleArgs: string[];
}

function parseOptions(): Options {
  const { own, roles } = splitRoleArgs();
  let parsed: ReturnType<typeof parse>;
  function parse(args: string[]) {
    return parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        runs: { type: "string", default: "5" },
        mib: { type: "string", default: "256" },
        tunnels: { type: "string", default: "300" },
        concurrent: { type: "string", default: "200" },
        reference: { type: "string" },
        paths: { type: "string" },
        json: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  }
  try {
    parsed = parse(own);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const count = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) {
      process.stderr.write(`bench: --${name} must be an integer >= ${min}, got ${JSON.stringify(text)}\n`);
      process.exit(2);
    }
    return n;
  };
  const reference = values.reference ?? (process.env.QUIC_TUNNEL_REFERENCE || undefined);
  let paths = ALL_PATHS;
  if (values.paths) {
    paths = values.paths.split(",").map((p) => p.trim()) as PathName[];
    const unknown = paths.filter((p) => !ALL_PATHS.includes(p));
    if (unknown.length > 0) {
      process.stderr.write(`bench: unknown path(s) ${unknown.join(", ")}; choose from ${ALL_PATHS.join(",")}\n`);
      process.exit(2);
    }
  }
  if (!reference) paths = paths.filter((p) => p !== "reference");
  return {
    runs: count("runs", values.runs, 1),
    mib: count("mib", values.mib, 1),
    tunnels: count("tunnels", values.tunnels, 0),
    concurrent: count("concurrent", values.concurrent, 0),
    reference,
    paths,
    json: values.json,
    roleArgs: roles,
  };
}

// ---------------------------------------------------------------------------------------------
// Statistics and /proc
// ---------------------------------------------------------------------------------------------
const median = (xs: number[]) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const percentile = (xs: number[], p: number) =>
  xs.length === 0 ? Number.NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

// ---------------------------------------------------------------------------------------------
// Processes and cleanup
// ---------------------------------------------------------------------------------------------
const children = new Set<ChildProcess>();
let workDir: string | undefined;

/** Kills every child still running and removes the temporary directory; safe to call twice. */
function cleanupSync(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }
  children.clear();
  if (workDir) {
    rmSync(workDir, { recursive: true, force: true });
    workDir = undefined;
  }
}

/** Stops a child with SIGTERM, then SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  }
  children.delete(child);
}

function track<T extends { child: ChildProcess }>(role: T): T {
  children.add(role.child);
  return role;
}

/** Starts a script or command that prints `listening PORT` on stdout. */
async function startListening(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"], cwd: ROOT, env: env ?? process.env });
  children.add(child);
  const port = await new Promise<number>((resolve, reject) => {
    let text = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (d: string) => {
      text += d;
      const match = /listening (\d+)/.exec(text);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} exited (${code}) before listening`)));
    setTimeout(() => reject(new Error(`${args.join(" ")} did not listen within 15 s`)), 15_000).unref();
  });
  return { child, port };
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/** One curl transfer; resolves with MiB/s after checking that every byte arrived. */
async function transfer(opts: Options, targetPort: number, proxyPort: number | undefined, direction: "down" | "up", upload: string) {
  const bytes = opts.mib << 20;
  const proxy = proxyPort ? ["-p", "--proxy", `127.0.0.1:${proxyPort}`] : [];
  const common = [...proxy, "-sS", "--max-time", "600", "-H", "Expect:"];
  const args =
    direction === "down"
      ? [
          ...common,
          "-o",
          "/dev/null",
          "-w",
          "%{http_code} %{size_download} %{speed_download}",
          `http://127.0.0.1:${targetPort}/mib/${opts.mib}`,
        ]
      : [...common, "-T", upload, "-w", "%{http_code} %{size_upload} %{speed_upload}", `http://127.0.0.1:${targetPort}/upload`];
  const result = await run("curl", args, { timeoutMs: 620_000 });
  const out = result.stdout.toString().trim().split(/\s+/);
  const [code, size, speed] = out.slice(-3).map(Number);
  const received = direction === "up" ? Number(out[0]) : size;
  if (result.code !== 0 || code !== 200 || size !== bytes || received !== bytes) {
    throw new Error(
      `curl ${direction} failed (exit ${result.code}, http ${code}, ${size}/${received} of ${bytes} bytes): ${result.stderr.trim()}`,
    );
  }
  return speed / (1 << 20);
}

/** Milliseconds from starting the TCP connect to the whole `200` answer of a CONNECT (direct: to the TCP connect). */
function connectTime(port: number, targetPort: number, direct: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let text = "";
    const socket = net.connect({ port, host: "127.0.0.1", noDelay: true }, () => {
      if (direct) {
        resolve(performance.now() - started);
        socket.destroy();
        return;
      }
      socket.write(`CONNECT 127.0.0.1:${targetPort} HTTP/1.1\r\nHost: 127.0.0.1:${targetPort}\r\n\r\n`);
    });
    socket.setTimeout(10_000, () => {
      socket.destroy();
      reject(new Error("no CONNECT answer within 10 s"));
    });
    socket.on("data", (chunk) => {
      text += chunk.toString("latin1");
      if (!text.includes("\r\n\r\n")) return;
      const elapsed = performance.now() - started;
      socket.destroy();
      if (/^HTTP\/1\.[01] 200/.test(text)) resolve(elapsed);
      else reject(new Error(`CONNECT answered ${text.split("\r\n")[0]}`));
    });
    socket.once("error", reject);
    socket.once("close", () => reject(new Error(`closed before a CONNECT answer (${JSON.stringify(text.slice(0, 80))})`)));
  });
}

/**
 * A short tunnel: CONNECT + HTTP/1.0 GET of a small answer (direct: the GET alone). True once the
 * whole answer arrived (its Content-Length); the client then closes. It does not wait for the
 * tunnel to close by itself: the reference keeps the client's connection open after the target
 * closed, until the client closes too.
 */
function tunnelRequest(port: number, targetPort: number, direct: boolean): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1", noDelay: true }, () => {
      const get = "GET / HTTP/1.0\r\n\r\n";
      socket.write(direct ? get : `CONNECT 127.0.0.1:${targetPort} HTTP/1.1\r\n\r\n${get}`);
    });
    let text = "";
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
      // Skip the CONNECT answer, then wait for the GET answer's head and body.
      const get = direct ? 0 : text.indexOf("\r\n\r\n") + 4;
      if (get < 4 && !direct) return;
      const headEnd = text.indexOf("\r\n\r\n", get);
      if (headEnd < 0) return;
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(text.slice(get, headEnd))?.[1] ?? Number.NaN);
      if (text.length - (headEnd + 4) >= length) finish(text.includes("hello through the tunnel"));
    });
    socket.on("close", () => resolve(text.includes("hello through the tunnel")));
    socket.on("error", () => resolve(false));
    socket.setTimeout(30_000, () => finish(false));
  });
}

/**
 * Which build of the reference runs, from the Go build information in its server binary: a build
 * with Debian's quic-go 0.29 moves about half of what the shipped one (0.42) does.
 */
function referenceBuild(dir: string): string {
  const binary = join(dir, "quic-server");
  const info = readFileSync(binary, "latin1");
  const quicGo = /\tgithub\.com\/quic-go\/quic-go\t(v[^\t\n]+)/.exec(info)?.[1] ?? "unknown";
  const go = /\bgo1\.\d+(?:\.\d+)?\b/.exec(info)?.[0] ?? "unknown";
  return `${binary}, quic-go ${quicGo}, ${go}`;
}

/** Tries CONNECT through `port` until it answers 200 (the reference's agent logs nothing when it connects). */
async function waitForTunnel(port: number, targetPort: number, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await connectTime(port, targetPort, false);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: no working tunnel within 15 s: ${(err as Error).message}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------
const fmt = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : "-");
function table(rows: string[][]): string {
  const widths = rows[0].map((_, col) => Math.max(...rows.map((row) => (row[col] ?? "").length)));
  return rows
    .map((row) => row.map((cell, col) => (col === 0 ? cell.padEnd(widths[col]) : cell.padStart(widths[col]))).join("  "))
    .join("\n");
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------
async function main(): Promise<void> {
  const opts = parseOptions();
  process.on("exit", cleanupSync);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping\n`);
      cleanupSync();
      process.exit(signal === "SIGINT" ? 130 : 143);
    });
  }
  try {
    await measure(opts);
  } catch (err) {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
    process.exitCode = 1;
  } finally {
    await Promise.all([...children].map((child) => stopChild(child)));
    cleanupSync();
  }
  process.exit(process.exitCode ?? 0);
}

interface PathSetup {
  name: PathName;
  /** TCP port the client connects to (the target itself for direct). */
  port: number;
  /** Processes whose memory and CPU are reported. */
  roles: Array<{ role: "server" | "agent"; pid: number }>;
}

async function measure(opts: Options): Promise<void> {
  const loadAtStart = loadavg()[0];
  workDir = mkdtempSync(join(tmpdir(), "quic-tunnel-bench-"));
  const certs = ensureDevCerts(join(workDir, "certs"));
  const upload = join(workDir, "upload.bin");
  {
    const fd = openSync(upload, "w");
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    for (let i = 0; i < opts.mib; i++) writeSync(fd, chunk);
    closeSync(fd);
  }

  const [runtime, base] = runtimeCommand("scripts/bench.ts");
  const target = await startListening(runtime, base, { ...process.env, [TARGET_ENV]: "1" });
  const targetPort = target.port;

  const setups: PathSetup[] = [];
  for (const name of opts.paths) {
    if (name === "direct") setups.push({ name, port: targetPort, roles: [] });
    else if (name === "relay") {
      const [command, args] = runtimeCommand("scripts/connect-relay.ts");
      const relay = await startListening(command, [...args, "--listen", "127.0.0.1:0"]);
      setups.push({ name, port: relay.port, roles: [{ role: "server", pid: relay.child.pid as number }] });
    } else if (name === "reference") {
      const dir = opts.reference as string;
      const reference = await startReferenceServer(dir, certs);
      const [server, tcp, quic] = [track(reference.server), reference.tcpPort, reference.quicPort];
      const agent = track(spawnProcess(join(dir, "quic-client"), agentArgs(`127.0.0.1:${quic}`, certs)));
      await waitForTunnel(tcp, targetPort, "reference");
      setups.push(roleSetup(name, tcp, server, agent));
    } else if (name === "tcp") {
      const server = track(await startServer({ certs, args: [...opts.roleArgs, "--listen-agent-tcp", "127.0.0.1:0"] }));
      const tcpArgs = ["--transport", "tcp", "--server-tcp", `127.0.0.1:${server.agentTcpPort}`];
      const agent = track(await startAgent(server.quicPort, { certs, args: [...opts.roleArgs, ...tcpArgs] }));
      setups.push(roleSetup(name, server.tcpPort, server, agent));
    } else {
      const server = track(await startServer({ certs, args: opts.roleArgs, engine: name }));
      const agent = track(await startAgent(server.quicPort, { certs, args: opts.roleArgs, engine: name }));
      setups.push(roleSetup(name, server.tcpPort, server, agent));
    }
  }
  for (const setup of setups) if (setup.name !== "direct") await waitForTunnel(setup.port, targetPort, setup.name);

  // Idle memory, after startup and one tunnel.
  const idle = new Map<number, { rss: number; anon: number }>();
  for (const setup of setups)
    for (const { pid } of setup.roles) idle.set(pid, { rss: statusMb(pid, "VmRSS"), anon: statusMb(pid, "RssAnon") });

  const pids = setups.flatMap((setup) => setup.roles.map((r) => r.pid));
  const peakPrivate = new Map<number, number>();
  const sample = () => {
    for (const pid of pids) {
      const anon = statusMb(pid, "RssAnon");
      if (Number.isFinite(anon)) peakPrivate.set(pid, Math.max(peakPrivate.get(pid) ?? 0, anon));
    }
  };
  sample();
  const sampler = setInterval(sample, 50);

  const order = (run: number) => setups.map((_, i) => setups[(i + run) % setups.length]);
  const results = Object.fromEntries(
    setups.map((s) => [
      s.name,
      {
        down: [] as number[],
        up: [] as number[],
        cpu: { down: {} as Record<string, number>, up: {} as Record<string, number>, burst: {} as Record<string, number> },
        latency: [] as number[],
        latencyErrors: 0,
        transferErrors: [] as string[],
        concurrentMs: [] as number[],
        concurrentErrors: [] as number[],
      },
    ]),
  ) as Record<
    string,
    {
      down: number[];
      up: number[];
      cpu: Record<"down" | "up" | "burst", Record<string, number>>;
      latency: number[];
      latencyErrors: number;
      transferErrors: string[];
      concurrentMs: number[];
      concurrentErrors: number[];
    }
  >;

  const log = (text: string) => process.stderr.write(text);
  log(`bench: paths ${setups.map((s) => s.name).join(", ")}; ${opts.runs} runs of ${opts.mib} MiB each way\n`);
  for (let i = 0; i < opts.runs; i++) {
    for (const direction of ["down", "up"] as const) {
      for (const setup of order(i)) {
        const before = setup.roles.map((r) => cpuSeconds(r.pid));
        const started = performance.now();
        const r = results[setup.name];
        let speed: number;
        try {
          speed = await transfer(opts, targetPort, setup.name === "direct" ? undefined : setup.port, direction, upload);
        } catch (err) {
          // Counted and reported; the other paths and runs go on.
          r.transferErrors.push(`run ${i + 1} ${direction}: ${(err as Error).message}`);
          log(`  run ${i + 1} ${direction.padEnd(4)} ${setup.name.padEnd(9)} FAILED: ${(err as Error).message}\n`);
          continue;
        }
        r[direction].push(speed);
        r.cpu[direction].wall = (r.cpu[direction].wall ?? 0) + (performance.now() - started) / 1000;
        setup.roles.forEach((role, k) => {
          r.cpu[direction][role.role] = (r.cpu[direction][role.role] ?? 0) + cpuSeconds(role.pid) - before[k];
        });
        log(`  run ${i + 1} ${direction.padEnd(4)} ${setup.name.padEnd(9)} ${speed.toFixed(1)} MiB/s\n`);
      }
    }
  }

  log(`bench: ${opts.tunnels} sequential CONNECTs per path, timed by a Python client\n`);
  const timed = await connectTimes(
    setups.map((setup) => ({ name: setup.name, port: setup.port, direct: setup.name === "direct" })),
    { targetPort, count: opts.tunnels },
  );
  for (const setup of setups) {
    results[setup.name].latency.push(...timed.times[setup.name]);
    results[setup.name].latencyErrors += timed.errors[setup.name];
  }

  if (opts.concurrent > 0) {
    log(`bench: ${opts.runs} bursts of ${opts.concurrent} concurrent tunnels per path\n`);
    for (let i = 0; i < opts.runs; i++) {
      for (const setup of order(i)) {
        const before = setup.roles.map((role) => cpuSeconds(role.pid));
        const started = performance.now();
        const oks = await Promise.all(
          Array.from({ length: opts.concurrent }, () => tunnelRequest(setup.port, targetPort, setup.name === "direct")),
        );
        const r = results[setup.name];
        r.concurrentMs.push(performance.now() - started);
        r.concurrentErrors.push(oks.filter((ok) => !ok).length);
        // The teardown of the burst's tunnels counts too: read the CPU time after a pause.
        await new Promise((resolve) => setTimeout(resolve, 200));
        setup.roles.forEach((role, k) => {
          r.cpu.burst[role.role] = (r.cpu.burst[role.role] ?? 0) + cpuSeconds(role.pid) - before[k];
        });
      }
    }
  }
  clearInterval(sampler);
  sample();

  const memory = Object.fromEntries(
    setups.map((s) => [
      s.name,
      Object.fromEntries(
        s.roles.map(({ role, pid }) => [
          role,
          {
            pid,
            peakRss: statusMb(pid, "VmHWM"),
            peakPrivate: peakPrivate.get(pid) ?? Number.NaN,
            idleRss: idle.get(pid)?.rss ?? Number.NaN,
            idlePrivate: idle.get(pid)?.anon ?? Number.NaN,
            endRss: statusMb(pid, "VmRSS"),
          },
        ]),
      ),
    ]),
  ) as Record<string, Record<string, { peakRss: number; peakPrivate: number; idleRss: number; idlePrivate: number; endRss: number }>>;

  const load = { start: loadAtStart, end: loadavg()[0] };
  report(opts, setups, results, memory, load);
  if (opts.json) {
    writeFileSync(
      opts.json,
      `${JSON.stringify({ date: new Date().toISOString(), runtime: `bun ${process.versions.bun}`, load, options: opts, results, memory }, null, 1)}\n`,
    );
  }
}

function roleSetup(name: PathName, port: number, server: RoleProcess, agent: RoleProcess): PathSetup {
  return {
    name,
    port,
    roles: [
      { role: "server", pid: server.child.pid as number },
      { role: "agent", pid: agent.child.pid as number },
    ],
  };
}

function report(
  opts: Options,
  setups: PathSetup[],
  results: Record<
    string,
    {
      down: number[];
      up: number[];
      cpu: Record<"down" | "up" | "burst", Record<string, number>>;
      latency: number[];
      latencyErrors: number;
      transferErrors: string[];
      concurrentMs: number[];
      concurrentErrors: number[];
    }
  >,
  memory: Record<string, Record<string, { peakRss: number; peakPrivate: number; idleRss: number; idlePrivate: number; endRss: number }>>,
  load: { start: number; end: number },
): void {
  const names = setups.map((s) => s.name);
  const ref = names.includes("reference") ? "reference" : undefined;
  const ours = names.filter((n) => n === "quiche" || n === "node-quic" || n === "tcp");
  /** GiB the path moved in `direction` (failed transfers are not counted). */
  const gib = (n: PathName, direction: "down" | "up") => (results[n][direction].length * opts.mib) / 1024;
  type Metric = {
    label: string;
    value: (n: PathName) => number;
    digits: number;
    ratio?: boolean;
    goal?: (ratio: number, n: PathName) => boolean;
    goalText?: string;
  };
  const mem = (n: string, role: string, key: "peakRss" | "peakPrivate" | "idleRss" | "idlePrivate") =>
    memory[n]?.[role]?.[key] ?? Number.NaN;
  const metrics: Metric[] = [
    { label: "download MiB/s (median)", value: (n) => median(results[n].down), digits: 1, goal: (r) => r >= 1.5, goalText: ">=1.5x" },
    { label: "upload MiB/s (median)", value: (n) => median(results[n].up), digits: 1, goal: (r) => r >= 1.5, goalText: ">=1.5x" },
    { label: "failed transfers", value: (n) => results[n].transferErrors.length, digits: 0, ratio: false },
    { label: "CONNECT-to-200 p50 ms", value: (n) => percentile(results[n].latency, 50), digits: 2, goal: (r) => r <= 1, goalText: "<=1x" },
    { label: "CONNECT-to-200 p99 ms", value: (n) => percentile(results[n].latency, 99), digits: 2 },
    {
      label: `${opts.concurrent} concurrent: wall ms (median)`,
      value: (n) => median(results[n].concurrentMs),
      digits: 0,
      goal: (r, n) => r <= 1.5 && results[n].concurrentErrors.every((e) => e === 0),
      goalText: "<=1.5x, 0 err",
    },
    {
      label: `${opts.concurrent} concurrent: errors (max)`,
      value: (n) => Math.max(0, ...results[n].concurrentErrors),
      digits: 0,
      ratio: false,
    },
    {
      label: "server CPU ms per 100 burst tunnels",
      value: (n) => (100_000 * (results[n].cpu.burst.server ?? Number.NaN)) / (opts.runs * opts.concurrent),
      digits: 0,
    },
    {
      label: "agent CPU ms per 100 burst tunnels",
      value: (n) => (100_000 * (results[n].cpu.burst.agent ?? Number.NaN)) / (opts.runs * opts.concurrent),
      digits: 0,
    },
    {
      label: "server peak RSS MB (VmHWM)",
      value: (n) => mem(n, "server", "peakRss"),
      digits: 1,
      goal: (_r, n) => mem(n, "server", "peakRss") <= 64,
      goalText: "<=64 MB",
    },
    { label: "server peak private MB (RssAnon)", value: (n) => mem(n, "server", "peakPrivate"), digits: 1 },
    { label: "server idle RSS MB", value: (n) => mem(n, "server", "idleRss"), digits: 1 },
    {
      label: "agent peak RSS MB (VmHWM)",
      value: (n) => mem(n, "agent", "peakRss"),
      digits: 1,
      goal: (_r, n) => mem(n, "agent", "peakRss") <= 64,
      goalText: "<=64 MB",
    },
    { label: "agent peak private MB (RssAnon)", value: (n) => mem(n, "agent", "peakPrivate"), digits: 1 },
    { label: "agent idle RSS MB", value: (n) => mem(n, "agent", "idleRss"), digits: 1 },
    ...(["download", "upload"] as const).flatMap((direction) => {
      const key = direction === "download" ? "down" : "up";
      return (["server", "agent"] as const).flatMap((role): Metric[] => [
        { label: `${role} CPU s/GiB ${direction}`, value: (n) => (results[n].cpu[key][role] ?? Number.NaN) / gib(n, key), digits: 2 },
        {
          label: `${role} CPU % busy in ${direction}`,
          value: (n) => (100 * (results[n].cpu[key][role] ?? Number.NaN)) / results[n].cpu[key].wall,
          digits: 0,
        },
      ]);
    }),
  ];
  const header = ["", ...names, ...(ref ? ours.map((n) => `${n}/ref`) : []), ...(ref ? ["goal"] : [])];
  const rows: string[][] = [header];
  for (const m of metrics) {
    const row = [m.label, ...names.map((n) => fmt(m.value(n), m.digits))];
    if (ref) {
      for (const n of ours) {
        const ratio = m.value(n) / m.value(ref);
        const verdict = m.goal ? (m.goal(ratio, n) ? " ok" : " MISS") : "";
        row.push(m.ratio === false ? "" : `${fmt(ratio, 2)}x${verdict}`);
      }
      row.push(m.goalText ?? "");
    }
    rows.push(row);
  }
  const runtime = process.versions.bun ? `bun ${process.versions.bun}` : `node ${process.version}`;
  console.log(
    `\nquic-reverse-http-tunnel benchmark, ${runtime}, loopback; ${opts.mib} MiB x ${opts.runs} runs, ${opts.tunnels} sequential tunnels, ${opts.concurrent} concurrent${opts.roleArgs.length ? `; role flags: ${opts.roleArgs.join(" ")}` : ""}`,
  );
  console.log(
    `(1-minute load average ${load.start.toFixed(2)} before, ${load.end.toFixed(2)} after, ${availableParallelism()} CPUs; a busy machine skews every column)`,
  );
  if (ref) console.log(`(reference: ${referenceBuild(opts.reference as string)})`);
  console.log("(direct: no proxy, its CONNECT row is the bare TCP connect; relay: scripts/connect-relay.ts, one process)\n");
  console.log(table(rows));
  if (!ref) console.log("\n(no reference: give --reference DIR or QUIC_TUNNEL_REFERENCE for the ratios and goals)");
  console.log("\nPer-run MiB/s (run order rotates):");
  for (const n of names) {
    console.log(
      `  ${n.padEnd(9)} down ${results[n].down.map((x) => x.toFixed(0)).join(" ")}   up ${results[n].up.map((x) => x.toFixed(0)).join(" ")}`,
    );
  }
  console.log("Concurrent bursts, wall ms (errors):");
  for (const n of names) {
    console.log(
      `  ${n.padEnd(9)} ${results[n].concurrentMs.map((x, i) => `${x.toFixed(0)}(${results[n].concurrentErrors[i]})`).join(" ")}`,
    );
  }
  for (const n of names) {
    for (const failure of results[n].transferErrors) console.log(`Transfer FAILED on ${n}, ${failure}`);
  }
  const latencyErrors = names.filter((n) => results[n].latencyErrors > 0);
  if (latencyErrors.length > 0) console.log(`CONNECT errors: ${latencyErrors.map((n) => `${n} ${results[n].latencyErrors}`).join(", ")}`);
}

if (process.env[TARGET_ENV] === "1") serveTarget();
else await main();

/**
 * Traffic for the tunnel from the project's own tooling (tests, soak, benchmarks): a local HTTP
 * target serving deterministic bodies whose sha256 is known in any process, a raw TCP client, a
 * CONNECT timer outside any JavaScript event loop, and clients that never read.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { run } from "./roles.ts";

/** 1 MiB of pseudo-random bytes, the same in every process (so a target in another process matches). */
const BLOCK = Buffer.concat(Array.from({ length: 1 << 15 }, (_, i) => createHash("sha256").update(`block ${i}`).digest()));

/** The n-th MiB of the deterministic download body: a random block stamped with its index. */
function bodyChunk(index: number): Buffer {
  const chunk = Buffer.from(BLOCK);
  chunk.writeUInt32BE(index, 0);
  return chunk;
}

/** sha256 (hex) of the download body of `mib` MiB that {@link startHttpTarget} serves. */
export function expectedSha256(mib: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < mib; i++) hash.update(bodyChunk(i));
  return hash.digest("hex");
}

/** The body `GET /bytes/N` answers: N bytes of the same deterministic block. */
export function bytesBody(length: number): Buffer {
  return BLOCK.subarray(0, length);
}

/**
 * A local HTTP target: `GET /mib/N` sends N MiB, `GET /bytes/N` N bytes (N at most 1 MiB), `POST`
 * answers the body's `bytes sha256`.
 */
export async function startHttpTarget(host = "127.0.0.1"): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.method === "POST" || req.method === "PUT") {
      const hash = createHash("sha256");
      let bytes = 0;
      req.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on("end", () => res.end(`${bytes} ${hash.digest("hex")}`));
      return;
    }
    const bytes = /^\/bytes\/(\d+)$/.exec(req.url ?? "");
    if (bytes) {
      const body = bytesBody(Number(bytes[1]));
      res.writeHead(200, { "content-length": body.length, "content-type": "application/octet-stream" }).end(body);
      return;
    }
    const mib = Number(/^\/mib\/(\d+)$/.exec(req.url ?? "")?.[1] ?? 0);
    if (!mib) {
      res.end("hello through the tunnel\n");
      return;
    }
    res.writeHead(200, { "content-length": mib << 20, "content-type": "application/octet-stream" });
    let index = 0;
    const pump = () => {
      while (index < mib) {
        if (!res.write(bodyChunk(index++))) return void res.once("drain", pump);
      }
      res.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Opens a raw TCP connection, sends `request`, and resolves with everything until the server closes. */
export function rawExchange(
  port: number,
  request: string | Buffer,
  options: { timeoutMs?: number; endAfterWrite?: boolean } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    let text = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
    });
    socket.on("error", (err) => (text ? resolve(text) : reject(err)));
    socket.on("close", () => resolve(text));
    socket.setTimeout(options.timeoutMs ?? 10_000, () => {
      socket.destroy();
      reject(new Error(`no close after ${options.timeoutMs ?? 10_000} ms; got ${JSON.stringify(text.slice(0, 200))}`));
    });
    socket.write(request);
    if (options.endAfterWrite) socket.end();
    socket.on("end", () => socket.end());
  });
}

/** Opens a tunnel to `targetPort` through the server at `proxyPort`; resolves with the socket once it answered 200. */
export function openTunnel(proxyPort: number, targetPort: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port: proxyPort, host: "127.0.0.1" }, () =>
      socket.write(`CONNECT 127.0.0.1:${targetPort} HTTP/1.1\r\n\r\n`),
    );
    let head = "";
    const onData = (chunk: Buffer) => {
      head += chunk.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      if (head.startsWith("HTTP/1.1 200 ")) resolve(socket);
      else reject(new Error(`tunnel refused: ${head.split("\r\n")[0]}`));
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

/** sha256 (hex) of a buffer. */
export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * The sequential CONNECT timer, a Python process outside any JavaScript event loop: timed from
 * inside this benchmark's Bun process, every path took about a millisecond more (the relay row
 * alone read 1.2 ms, more than the reference's whole tunnel with an outside client). It visits the
 * paths in a rotating order, `count` times each, and prints {path: [ms, ...], errors: {path: n}}.
 */
const CONNECT_TIMER = `
import json, socket, sys, time
paths, target, count = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
request = b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\nHost: 127.0.0.1:%d\\r\\n\\r\\n" % (target, target)
times = {p["name"]: [] for p in paths}
errors = {p["name"]: 0 for p in paths}
def once(port, direct):
    started = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if direct:
            return (time.perf_counter() - started) * 1000
        s.sendall(request)
        answer = b""
        while b"\\r\\n\\r\\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("closed before the answer")
            answer += chunk
        elapsed = (time.perf_counter() - started) * 1000
        if not answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            raise ValueError(answer.split(b"\\r\\n")[0])
        return elapsed
    finally:
        s.close()
for i in range(count):
    for k in range(len(paths)):
        path = paths[(i + k) % len(paths)]
        try:
            times[path["name"]].append(once(path["port"], path["direct"]))
        except Exception:
            errors[path["name"]] += 1
print(json.dumps({"times": times, "errors": errors}))
`;

/** CONNECT-to-200 milliseconds of `count` sequential tunnels through each path, from {@link CONNECT_TIMER}. */
export async function connectTimes(
  paths: { name: string; port: number; direct: boolean }[],
  options: { targetPort: number; count: number },
): Promise<{ times: Record<string, number[]>; errors: Record<string, number> }> {
  const result = await run("python3", ["-c", CONNECT_TIMER, JSON.stringify(paths), String(options.targetPort), String(options.count)], {
    timeoutMs: 30_000 + options.count * paths.length * 200,
  });
  if (result.code !== 0) throw new Error(`the CONNECT timer failed (exit ${result.code}): ${result.stderr.trim()}`);
  return JSON.parse(result.stdout.toString());
}

/** The clients of {@link nonReadingClients}: a Python process that holds them until `close`. */
export interface NonReadingClients {
  child: ChildProcess;
  /** Closes every client and resolves once the process has exited. */
  close(): Promise<void>;
}

const NON_READING_CLIENTS = `
import socket, sys
port, target, count, mib, half_close = (int(arg) for arg in sys.argv[1:6])
clients = []
for _ in range(count):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect(("127.0.0.1", port))
    c.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\nGET /mib/%d HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n" % (target, mib))
    if half_close:
        c.shutdown(socket.SHUT_WR)
    clients.append(c)
print("ready", flush=True)
sys.stdin.read()
for c in clients:
    c.close()
`;

/**
 * `count` clients of the proxy at `proxyPort`, each asking for `mib` MiB of the HTTP target at
 * `target` and never reading a byte of it, with 4 KiB receive buffers (a JavaScript socket cannot
 * shrink its own). Resolves once all are connected and have sent their request. With `halfClose`
 * each ends its sending side after the request, as a client whose request is complete may.
 */
export async function nonReadingClients(
  proxyPort: number,
  options: { target: number; count: number; mib: number; halfClose?: boolean },
): Promise<NonReadingClients> {
  const args = [proxyPort, options.target, options.count, options.mib, options.halfClose ? 1 : 0].map(String);
  const child = spawn("python3", ["-c", NON_READING_CLIENTS, ...args], { stdio: ["pipe", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`the non-reading clients exited with ${code}`)));
  });
  return {
    child,
    close: () =>
      new Promise((resolve) => {
        child.once("exit", () => resolve());
        child.stdin?.end();
      }),
  };
}

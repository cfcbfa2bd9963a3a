import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { dialThroughProxy, proxyFor } from "../../lib/transport/tcp/proxy.ts";
import { noTinyproxy, startTinyproxy, stopTinyproxy } from "../fixtures/tinyproxy.ts";

const target = { host: "server.example.com", port: 443 };

/** Rejects when `promise` takes longer than `ms`, so that no wait in this file is unbounded. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A server on 127.0.0.1 whose `close` also ends the connections it holds. */
async function serve(onSocket: (socket: Socket) => void): Promise<{ port: number; server: Server; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket.on("close", () => sockets.delete(socket)).on("error", () => {}));
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const close = () => {
    for (const socket of sockets) socket.destroy();
    return within(2000, "server close", new Promise<void>((resolve) => server.close(() => resolve())));
  };
  return { port: (server.address() as AddressInfo).port, server, close };
}

/** A port that was free a moment ago (nothing listens there now). */
async function freePort(): Promise<number> {
  const { port, close } = await serve(() => {});
  await close();
  return port;
}

/** Reads exactly `length` bytes (resuming the paused socket), within `ms`. */
function readBytes(socket: Socket, length: number, ms = 5000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let received = 0;
  return within(
    ms,
    `reading ${length} bytes`,
    new Promise<Buffer>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        chunks.push(chunk);
        received += chunk.length;
        if (received < length) return;
        socket.off("data", onData);
        resolve(Buffer.concat(chunks));
      };
      socket
        .on("data", onData)
        .once("error", reject)
        .once("end", () => reject(new Error(`end after ${received} bytes`)));
      socket.resume();
    }),
  );
}

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** Sends 1 MiB through `socket` to an echo target and checks that it comes back intact. */
async function assertEchoes(socket: Socket): Promise<void> {
  const data = randomBytes(1024 * 1024);
  socket.write(data);
  assert.equal(sha256((await readBytes(socket, data.length, 10_000)).subarray(0, data.length)), sha256(data));
}

describe("proxyFor", () => {
  test("the --proxy flag beats the environment, HTTPS_PROXY beats https_proxy, HTTP_PROXY is not read", () => {
    const env = { HTTPS_PROXY: "http://upper:3128", https_proxy: "http://lower:3128", HTTP_PROXY: "http://plain:3128" };
    assert.equal(proxyFor(target, { flag: "http://flag:8080", env })?.href, "http://flag:8080/");
    assert.equal(proxyFor(target, { flag: "", env })?.href, "http://upper:3128/");
    assert.equal(proxyFor(target, { env: { https_proxy: "http://lower:3128" } })?.href, "http://lower:3128/");
    assert.equal(proxyFor(target, { env: { HTTP_PROXY: "http://plain:3128" } }), undefined);
    assert.equal(proxyFor(target, { env: {} }), undefined);
  });

  test("NO_PROXY forms: names, domains, ports, IPs and CIDRs, case-insensitive; it applies to --proxy too", () => {
    const through = (host: string, noProxy: string, port = 443) =>
      proxyFor({ host, port }, { env: { HTTPS_PROXY: "http://proxy:3128", NO_PROXY: noProxy } }) !== undefined;
    assert.equal(through("server.example.com", "*"), false);
    assert.equal(through("Server.Example.COM", "other.net, server.example.com"), false);
    assert.equal(through("server.example.com", ".example.com"), false);
    assert.equal(through("example.com", ".example.com"), false);
    assert.equal(through("server.example.com", "EXAMPLE.com"), false);
    assert.equal(through("server.notexample.com", "example.com"), true);
    assert.equal(through("server.example.com", "server.example.com:443"), false);
    assert.equal(through("server.example.com", "server.example.com:8443"), true);
    assert.equal(through("10.1.2.3", "10.1.2.3"), false);
    assert.equal(through("10.1.2.3", "10.0.0.0/8"), false);
    assert.equal(through("11.1.2.3", "10.0.0.0/8"), true);
    assert.equal(through("::ffff:10.1.2.3", "10.0.0.0/8"), false);
    assert.equal(through("[fd00::1]", "fd00::/8"), false);
    assert.equal(through("fd00::1", "[fd00::/8]"), false);
    assert.equal(through("fe00::1", "fd00::/8"), true);
    assert.equal(through("[::1]", "[0:0::1]:443"), false);
    assert.equal(through("10.1.2.3", "10.1.2.3.example.com, 1.2.3"), true);
    assert.equal(through("server.example.com", ""), true);
    assert.equal(proxyFor(target, { env: { https_proxy: "http://proxy:3128", no_proxy: "example.com" } }), undefined);
    assert.equal(proxyFor(target, { flag: "http://proxy:3128", env: { NO_PROXY: "example.com" } }), undefined);
  });

  test("anything but an http:// URL is an error naming its source, without the password", () => {
    const bad: Array<[string, Record<string, string>, RegExp]> = [
      ["https://proxy:3128", {}, /^--proxy "https:\/\/proxy:3128": expected an http:\/\/ proxy URL/],
      ["socks5://proxy:1080", {}, /^--proxy "socks5/],
      ["not a url", {}, /^--proxy "not a url"/],
      ["", { HTTPS_PROXY: "proxy:3128" }, /^HTTPS_PROXY "proxy:3128"/],
      ["", { https_proxy: "https://user:secret@proxy" }, /^https_proxy "https:\/\/user:\*\*\*@proxy"/],
      ["", { HTTPS_PROXY: "user:secret@proxy:3128", NO_PROXY: "*" }, /^HTTPS_PROXY "user:\*\*\*@proxy:3128"/],
    ];
    for (const [flag, env, message] of bad) {
      assert.throws(
        () => proxyFor(target, { flag, env }),
        (error: Error) => message.test(error.message) && !error.message.includes("secret"),
        `${flag} ${JSON.stringify(env)}`,
      );
    }
  });
});

describe("dialThroughProxy against a scripted proxy", () => {
  test("sends CONNECT with Host and decoded Basic credentials; bytes after the head are not lost", async () => {
    let request = "";
    const proxy = await serve((socket) => {
      socket.on("data", (chunk) => {
        request += chunk.toString("latin1");
        if (request.includes("\r\n\r\n")) socket.write("HTTP/1.1 200 Connection established\r\nX-Extra: 1\r\n\r\nearly bytes");
      });
    });
    try {
      const url = new URL(`http://us%20er:p%40ss%3Aword@127.0.0.1:${proxy.port}`);
      const socket = await dialThroughProxy(url, { host: "fd00::1", port: 8443 }, { timeoutMs: 2000 });
      assert.equal((await readBytes(socket, 11)).toString(), "early bytes");
      socket.destroy();
      const credentials = Buffer.from("us er:p@ss:word").toString("base64");
      assert.equal(request, `CONNECT [fd00::1]:8443 HTTP/1.1\r\nHost: [fd00::1]:8443\r\nProxy-Authorization: Basic ${credentials}\r\n\r\n`);
    } finally {
      await proxy.close();
    }
  });

  test("a refusal is one line with the status, a silent proxy times out, an early close is named", async () => {
    const replies: Array<string | undefined> = [
      "HTTP/1.0 407 Proxy Authentication Required\r\nX: y\r\n\r\nbody",
      undefined,
      "",
      "x".repeat(17_000),
    ];
    let closed = 0;
    const proxy = await serve((socket) => {
      const reply = replies.shift();
      socket.on("close", () => closed++).resume();
      if (reply === "") socket.end();
      else if (reply !== undefined) socket.write(reply);
    });
    const url = new URL(`http://user:secret@127.0.0.1:${proxy.port}`);
    const name = `http://127.0.0.1:${proxy.port}`;
    const t = { host: "127.0.0.1", port: 9 };
    try {
      const expected = [
        `proxy ${name} refused CONNECT 127.0.0.1:9: 407 Proxy Authentication Required`,
        `cannot reach proxy ${name} for 127.0.0.1:9: timed out after 300 ms`,
        `cannot reach proxy ${name} for 127.0.0.1:9: connection closed before the response head`,
        `proxy ${name} sent a response head over 16384 bytes for CONNECT 127.0.0.1:9`,
      ];
      for (const message of expected) await assert.rejects(dialThroughProxy(url, t, { timeoutMs: 300 }), { message });
      const aborted = AbortSignal.abort();
      await assert.rejects(dialThroughProxy(url, t, { timeoutMs: 300, signal: aborted }), /: aborted$/);
      // Every failed dial closed its socket, the timed-out one included.
      for (let i = 0; i < 100 && closed < 4; i++) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(closed, 4);
    } finally {
      await proxy.close();
    }
  });

  test("nothing listening at the proxy port is ECONNREFUSED, naming proxy and target; an https:// proxy is refused", async () => {
    const port = await freePort();
    await assert.rejects(dialThroughProxy(new URL(`http://127.0.0.1:${port}`), { host: "127.0.0.1", port: 9 }, { timeoutMs: 2000 }), {
      message: `cannot reach proxy http://127.0.0.1:${port} for 127.0.0.1:9: ECONNREFUSED`,
    });
    await assert.rejects(dialThroughProxy(new URL("https://user:secret@proxy:3128"), { host: "127.0.0.1", port: 9 }, { timeoutMs: 2000 }), {
      message: 'proxy "https://user:***@proxy:3128/": expected an http:// proxy URL such as http://proxy:3128',
    });
  });
});

if (noTinyproxy) console.log(`skipped "through tinyproxy": ${noTinyproxy}`);

describe("dialThroughProxy through tinyproxy", { skip: noTinyproxy }, () => {
  let dir = "";
  const proxies: Record<string, { url: URL; child: ChildProcess }> = {};
  let echo: Awaited<ReturnType<typeof serve>>;
  let greeter: Awaited<ReturnType<typeof serve>>;
  const local = (port: number) => ({ host: "127.0.0.1", port });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "proxy-test-"));
    echo = await serve((socket) => socket.pipe(socket));
    greeter = await serve((socket) => socket.end("hello before you speak\n"));
    proxies.open = await startTinyproxy(dir, "open", []);
    proxies.auth = await startTinyproxy(dir, "auth", ["BasicAuth user pass"]);
    proxies.ports = await startTinyproxy(dir, "ports", ["ConnectPort 443"]);
  });

  after(async () => {
    await Promise.all(Object.values(proxies).map(({ child }) => stopTinyproxy(child)));
    await echo?.close();
    await greeter?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("without credentials, 1 MiB echoes back intact", async () => {
    const socket = await dialThroughProxy(proxies.open.url, local(echo.port), { timeoutMs: 5000 });
    try {
      await assertEchoes(socket);
    } finally {
      socket.destroy();
    }
  });

  test("bytes the target sends on connect, before the client writes, are not lost", async () => {
    const socket = await dialThroughProxy(proxies.open.url, local(greeter.port), { timeoutMs: 5000 });
    try {
      assert.equal((await readBytes(socket, 23)).toString(), "hello before you speak\n");
    } finally {
      socket.destroy();
    }
  });

  test("with BasicAuth, the right credentials work and missing or wrong ones are refused", async () => {
    const { port } = proxies.auth.url;
    const socket = await dialThroughProxy(new URL(`http://user:pass@127.0.0.1:${port}`), local(echo.port), { timeoutMs: 5000 });
    try {
      await assertEchoes(socket);
    } finally {
      socket.destroy();
    }
    const refused = `proxy http://127.0.0.1:${port} refused CONNECT 127.0.0.1:${echo.port}: 407 Proxy Authentication Required`;
    await assert.rejects(dialThroughProxy(proxies.auth.url, local(echo.port), { timeoutMs: 5000 }), { message: refused });
    await assert.rejects(
      dialThroughProxy(new URL(`http://user:wrong-secret@127.0.0.1:${port}`), local(echo.port), { timeoutMs: 5000 }),
      // tinyproxy 1.11.1 answers wrong credentials with 401 Unauthorized; later versions with 407.
      (error: Error) =>
        /: (401 Unauthorized|407 Proxy Authentication Required)$/.test(error.message) && !error.message.includes("wrong-secret"),
    );
  });

  test("a ConnectPort that forbids the target port is refused with tinyproxy's 403", async () => {
    await assert.rejects(dialThroughProxy(proxies.ports.url, local(echo.port), { timeoutMs: 5000 }), {
      message: `proxy http://127.0.0.1:${proxies.ports.url.port} refused CONNECT 127.0.0.1:${echo.port}: 403 Access violation`,
    });
  });
});

/**
 * Hostile and careless clients and operators against the real roles: each case with the answer it
 * must get. The server reads a client's head (within --header-timeout) before it opens a stream;
 * the agent decides on the address it dials; the tunnel never loops into the server itself.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { loadEngine } from "../lib/transport/mod.ts";
import { pipeBoth } from "../lib/tunnel/pipe.ts";
import { httpTargetFixture, trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  foreignCerts,
  rawExchange,
  roleMetrics,
  run,
  SLOW_TRANSPORT,
  scratchCerts,
  serverTlsArgs,
  spawnRole,
  startAgent,
  startServer,
} from "./harness.ts";
import { clientTls } from "./transport/conformance.ts";
import { until } from "./wait.ts";

const track = trackProcesses();
const target = httpTargetFixture();
const connectGet = (port: number) => `CONNECT 127.0.0.1:${port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`;

/** Opens `count` connections to `port` that send nothing; resolves with them once all are up. */
async function silentClients(port: number, count: number): Promise<net.Socket[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<net.Socket>((resolve, reject) => {
          const socket = net.connect({ port, host: "127.0.0.1" }, () => resolve(socket));
          socket.once("error", reject);
        }),
    ),
  );
}

/** Resolves with what `socket` received once it closes. */
function whenClosed(socket: net.Socket): Promise<string> {
  let text = "";
  socket.on("data", (chunk) => {
    text += chunk.toString("latin1");
  });
  socket.on("error", () => {});
  return new Promise((resolve) => socket.once("close", () => resolve(text)));
}

describe("clients that say nothing, or nothing that is HTTP", { skip: SLOW_TRANSPORT }, () => {
  test("400 silent clients from one address: no agent stream for any, half the slots held to --header-timeout (408), the rest 503 at once, other clients served meanwhile", async () => {
    // 300 slots: without the cap on heads pending from one address, these clients would take them all.
    const server = track(await startServer({ args: ["--header-timeout", "1s", "--admin-addr", "127.0.0.1:0", "--max-tunnels", "300"] }));
    const agent = track(await startAgent(server.quicPort, { args: ["--admin-addr", "127.0.0.1:0", "--max-tunnels", "100"] }));
    const silent = await silentClients(server.tcpPort, 400);
    const answers = silent.map(whenClosed);
    const served = await new Promise<string>((resolve, reject) => {
      const client = net.connect({ port: server.tcpPort, host: "127.0.0.1", localAddress: "127.0.0.2" }, () =>
        client.write(connectGet(target.port)),
      );
      let text = "";
      client.on("data", (chunk) => {
        text += chunk.toString("latin1");
        if (text.includes("hello through the tunnel")) {
          client.destroy();
          resolve(text);
        }
      });
      client.once("error", reject);
      client.once("close", () => resolve(text));
    });
    assert.match(served, /hello through the tunnel/, "a client from another address is served while 400 wait");
    // The agent counts the real tunnel once it has ended there, a moment after the client's answer.
    let agentMetrics = new Map<string, number>();
    const ended = () =>
      [...agentMetrics].reduce((sum, [series, value]) => sum + (series.startsWith("quic_tunnel_tunnels_total{") ? value : 0), 0);
    await until(
      async () => {
        agentMetrics = await roleMetrics(agent);
        return ended() >= 1;
      },
      "the agent to count the real tunnel",
      { intervalMs: 20 },
    );
    assert.equal(agentMetrics.get('quic_tunnel_tunnels_total{outcome="ok"}'), 1, "the agent saw only the real tunnel");
    assert.equal(agentMetrics.get("quic_tunnel_tunnels_active"), 0);
    const replies = await Promise.all(answers);
    // Half the slots (150) go to one address before the cap (a quarter of that) holds it off.
    assert.equal(replies.filter((reply) => reply.startsWith("HTTP/1.1 408 Request Timeout\r\n")).length, 150);
    const capped = replies.filter((reply) =>
      /^HTTP\/1\.1 503 [\s\S]*too many connections from 127\.0\.0\.1 are still sending their request head/.test(reply),
    );
    assert.equal(capped.length, 250);
    const serverMetrics = await roleMetrics(server);
    assert.equal(serverMetrics.get('quic_tunnel_tunnels_total{outcome="timeout"}'), 150);
  });

  test("300 silent TLS clients, some with part of a ClientHello or trickling one, and 50 silent Unix socket clients are closed at --header-timeout; curl is served meanwhile", async () => {
    const certs = scratchCerts();
    const path = join(mkdtempSync(join(tmpdir(), "quic-tunnel-silent-")), "proxy.sock");
    const server = track(
      await startServer({
        args: [
          ...["--tcp-cert-file", certs.serverCert, "--tcp-cert-key", certs.serverKey, "--listen-uds", path],
          ...["--header-timeout", "1s", "--admin-addr", "127.0.0.1:0"],
        ],
      }),
    );
    track(await startAgent(server.quicPort));
    const started = performance.now();
    const tls = await silentClients(server.tcpPort, 300);
    // A third say nothing, a third send a record header and the start of a ClientHello that
    // promise bytes which never come, a third trickle those bytes, one every 100 ms.
    const hello = Buffer.from("1603010200010001fc0303", "hex");
    for (const [i, socket] of tls.entries()) if (i % 3 === 1) socket.write(hello);
    const trickling = tls.filter((_, i) => i % 3 === 2);
    let sent = 0;
    const drip = setInterval(() => {
      for (const socket of trickling) if (!socket.destroyed) socket.write(hello.subarray(sent, sent + 1));
      sent = (sent + 1) % hello.length;
    }, 100);
    const unix = await Promise.all(
      Array.from(
        { length: 50 },
        () =>
          new Promise<net.Socket>((resolve, reject) => {
            const socket = net.connect(path, () => resolve(socket));
            socket.once("error", reject);
          }),
      ),
    );
    const closedAt: number[] = [];
    const unixReplies = unix.map((socket) => whenClosed(socket));
    for (const socket of [...tls, ...unix]) socket.once("close", () => closedAt.push(performance.now() - started));
    const curl = await run("curl", [
      ...["-p", "--proxy", `https://localhost:${server.tcpPort}`, "--proxy-cacert", certs.ca, "-sS", "--max-time", "10"],
      `http://127.0.0.1:${target.port}/`,
    ]);
    assert.equal(curl.stdout.toString(), "hello through the tunnel\n", `curl is served while 350 wait: ${curl.stderr}`);
    await until(
      () => closedAt.length === 350,
      () => `all 350 silent clients to be closed (${closedAt.length} are)`,
      { timeoutMs: 6_000 },
    ).finally(() => clearInterval(drip));
    const first = Math.min(...closedAt);
    const last = Math.max(...closedAt);
    assert.ok(first >= 900, `none is closed before its second is up (first after ${Math.round(first)} ms)`);
    assert.ok(last <= 3_500, `all are closed shortly after it (last after ${Math.round(last)} ms)`);
    for (const reply of await Promise.all(unixReplies)) assert.match(reply, /^HTTP\/1\.1 408 Request Timeout\r\n/);
    const metrics = await roleMetrics(server);
    assert.equal(metrics.get('quic_tunnel_client_handshake_failures_total{reason="timeout"}'), 300);
    assert.equal(metrics.get('quic_tunnel_tunnels_total{outcome="timeout"}'), 50, "the Unix socket's clients got 408");
  });

  test("a TLS ClientHello, or a line of garbage, is answered 400 at once", async () => {
    const server = track(await startServer());
    track(await startAgent(server.quicPort));
    for (const [what, bytes] of [
      ["a TLS ClientHello", Buffer.from("1603010200010001fc0303", "hex")],
      ["a line without HTTP", Buffer.from("hello there\r\n")],
      ["binary garbage", Buffer.from([0x00, 0xff, 0x10, 0x20])],
      ["a request line with an unknown version", Buffer.from("CONNECT a:1 SPDY/3\r\n")],
    ] as const) {
      const started = performance.now();
      const reply = await rawExchange(server.tcpPort, bytes, { timeoutMs: 3_000 });
      assert.match(reply, /^HTTP\/1\.1 400 Bad Request\r\n/, what);
      assert.ok(performance.now() - started < 1_000, `${what} answered at once`);
    }
  });

  test("oversized and malformed heads, and a slow trickle, get 431, 400 and 408", async () => {
    const server = track(await startServer({ args: ["--header-timeout", "1s"] }));
    track(await startAgent(server.quicPort));
    assert.match(await rawExchange(server.tcpPort, `CONNECT ${"a".repeat(1 << 20)}:1 HTTP/1.1\r\n\r\n`), /^HTTP\/1\.1 431 /);
    const headers = Array.from({ length: 10_000 }, (_, i) => `X-${i}: y\r\n`).join("");
    assert.match(await rawExchange(server.tcpPort, `CONNECT a:1 HTTP/1.1\r\n${headers}\r\n`), /^HTTP\/1\.1 431 /);
    assert.match(await rawExchange(server.tcpPort, "CONNECT no-port HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 [\s\S]*host:port/);
    assert.match(await rawExchange(server.tcpPort, "CONNECT [::1:80 HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 /);
    const slow = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
    const reply = whenClosed(slow);
    const drip = setInterval(() => slow.write("X"), 100);
    slow.write("CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Slow: ");
    assert.match(await reply, /^HTTP\/1\.1 408 /);
    clearInterval(drip);
  });
});

describe("the address that is dialed", { skip: SLOW_TRANSPORT }, () => {
  test("an IPv6 allow rule lets no IPv4 host through, however the target is spelled", async () => {
    const server = track(await startServer());
    track(await startAgent(server.quicPort, { args: ["--allow", `[::/0]:${target.port}`] }));
    for (const spelling of ["[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]", "[::ffff:127.0.0.1%lo]", "[::ffff:7f00:2]", "127.0.0.1"]) {
      const reply = await rawExchange(server.tcpPort, `CONNECT ${spelling}:${target.port} HTTP/1.1\r\n\r\n`);
      assert.match(reply, /^HTTP\/1\.1 403 Forbidden\r\n/, spelling);
    }
  });
});

describe("loops back into the server", { skip: SLOW_TRANSPORT }, () => {
  test("a CONNECT to the server's own listener is refused with 508 Loop Detected", async () => {
    const server = track(await startServer());
    const agent = track(await startAgent(server.quicPort));
    for (const host of ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"]) {
      const reply = await rawExchange(server.tcpPort, `CONNECT ${host}:${server.tcpPort} HTTP/1.1\r\n\r\n`);
      assert.match(reply, /^HTTP\/1\.1 508 Loop Detected\r\n[\s\S]*own client listener/, host);
    }
    assert.match(agent.log(), /outcome=loop/);
  });

  // Every spelling of "this host" a client can use: the unspecified address (which dials the local
  // host), shorthands of loopback, and, for a wildcard listener, the host's own other addresses.
  const external = Object.values(networkInterfaces())
    .flat()
    .filter((entry) => entry && !entry.internal && !entry.address.startsWith("fe80:"))
    .map((entry) => entry as NonNullable<typeof entry>);
  const listenersAndSpellings: Array<[string, string[]]> = [
    ["127.0.0.1", []],
    ["0.0.0.0", external.filter((entry) => entry.family === "IPv4").map((entry) => entry.address)],
    ["::", external.flatMap((entry) => (entry.family === "IPv4" ? [entry.address, `[::ffff:${entry.address}]`] : [`[${entry.address}]`]))],
  ];
  for (const [listenHost, own] of listenersAndSpellings) {
    const spellings = ["0.0.0.0", "0", "[::]", "[::ffff:0.0.0.0]", "[::ffff:0:0]", "0.0.0.1", "127.1", "127.0.0.2", ...own];
    test(`a 3,000-head pipeline into a listener on ${listenHost} through ${spellings.join(", ")}: 508 at once, no chain, others served`, async () => {
      const server = track(await startServer({ tcpHost: listenHost, args: ["--admin-addr", "127.0.0.1:0"] }));
      const agent = track(await startAgent(server.quicPort, { args: ["--admin-addr", "127.0.0.1:0"] }));
      let most = 0;
      let polling = true;
      const watching = (async () => {
        // Polled while the pipelines run: a growing chain shows as tunnels open on the server.
        for (let polls = 0; polling && polls < 2_000; polls++) {
          most = Math.max(most, (await roleMetrics(server)).get("quic_tunnel_tunnels_active") ?? 0);
        }
      })();
      const replies = spellings.map((host) =>
        rawExchange(server.tcpPort, `CONNECT ${host}:${server.tcpPort} HTTP/1.1\r\n\r\n`.repeat(3_000), { timeoutMs: 10_000 }),
      );
      const served = await rawExchange(server.tcpPort, connectGet(target.port));
      const answers = await Promise.allSettled(replies);
      polling = false;
      await watching;
      assert.match(served, /hello through the tunnel/, "another client is served meanwhile");
      for (const [i, answer] of answers.entries()) {
        const what = spellings[i];
        if (answer.status === "rejected") assert.fail(`${what}: the pipeline was not closed: ${String(answer.reason).slice(0, 300)}`);
        assert.match(answer.value.slice(0, 300), /^HTTP\/1\.1 508 Loop Detected\r\n/, what);
      }
      assert.ok(most <= spellings.length + 1, `at most one tunnel per pipeline, and the served one, were open (${most})`);
      const loops = (await roleMetrics(agent)).get('quic_tunnel_tunnels_total{outcome="loop"}');
      assert.equal(loops, spellings.length, "the agent refused each pipeline's first head, and saw no other");
    });
  }

  test("a chain of nested tunnels through a relay the agent cannot recognise collapses once the client has gone", async () => {
    const server = track(await startServer({ args: ["--admin-addr", "127.0.0.1:0", "--header-timeout", "2s"] }));
    track(await startAgent(server.quicPort));
    // A plain TCP forwarder to the server's listener: the agent cannot know it leads back there.
    const forwarder = net.createServer({ allowHalfOpen: true }, (socket) => {
      void pipeBoth(socket, net.connect({ port: server.tcpPort, host: "127.0.0.1", allowHalfOpen: true }));
    });
    await new Promise<void>((resolve) => forwarder.listen(0, "127.0.0.1", resolve));
    const port = (forwarder.address() as net.AddressInfo).port;
    const client = net.connect({ port: server.tcpPort, host: "127.0.0.1" });
    client.on("error", () => {});
    client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\n\r\n`.repeat(200));
    let open = Number.NaN;
    /** Polls the server's open tunnels (bounded) until `done` holds. */
    const openTunnelsUntil = (done: (count: number) => boolean, what: string, timeoutMs: number) =>
      until(
        async () => {
          open = (await roleMetrics(server)).get("quic_tunnel_tunnels_active") ?? Number.NaN;
          return done(open);
        },
        () => `${what} (${open} tunnels open)`,
        { timeoutMs, intervalMs: 100 },
      );
    try {
      await openTunnelsUntil((count) => count >= 20, "the chain to grow while the client is there", 10_000);
      client.destroy();
      // Every level ends once the one inside it does: the server must be idle within seconds.
      await openTunnelsUntil((count) => count === 0, "the chain to collapse once the client has gone", 25_000);
    } finally {
      forwarder.close();
    }
  });
});

describe("limits count every tunnel from its accept", { skip: SLOW_TRANSPORT }, () => {
  test("--max-tunnels on the server counts a client still silent; on the agent, one still dialing", async () => {
    const server = track(await startServer({ args: ["--max-tunnels", "1"] }));
    track(await startAgent(server.quicPort));
    const [silent] = await silentClients(server.tcpPort, 1);
    const refused = await rawExchange(server.tcpPort, connectGet(target.port));
    assert.match(refused, /^HTTP\/1\.1 503 [\s\S]*server tunnel limit \(1\) reached/);
    silent.destroy();

    const second = track(await startServer());
    const agent = track(
      await startAgent(second.quicPort, { args: ["--max-tunnels", "1", "--dial-timeout", "3s", "--admin-addr", "127.0.0.1:0"] }),
    );
    // 10.255.255.1 does not answer here: the first tunnel sits in its dial, holding the slot.
    const dialing = net.connect({ port: second.tcpPort, host: "127.0.0.1" });
    dialing.on("error", () => {});
    dialing.write("CONNECT 10.255.255.1:9 HTTP/1.1\r\n\r\n");
    await until(async () => (await roleMetrics(agent)).get("quic_tunnel_tunnels_active") === 1, "the agent to hold the dialing tunnel");
    const reply = await rawExchange(second.tcpPort, connectGet(target.port));
    assert.match(reply, /^HTTP\/1\.1 503 [\s\S]*agent tunnel limit \(1\) reached/);
    dialing.destroy();
  });
});

describe("certificates checked at start", { skip: SLOW_TRANSPORT }, () => {
  test("a key that is not the certificate's: the server exits 1 naming both flags, and so does the agent", async () => {
    const certs = scratchCerts();
    const server = spawnRole("server.ts", [...serverTlsArgs({ ...certs, serverKey: certs.clientKey }), "--listen-tcp", "127.0.0.1:0"]);
    assert.equal(await server.exited, 1);
    assert.match(server.log(), /--cert-key .*client\.key is not the private key of the certificate in --cert-file .*tls\.crt/);
    const agent = spawnRole("agent.ts", agentArgs("127.0.0.1:1", { ...certs, clientKey: certs.serverKey }));
    assert.equal(await agent.exited, 1);
    assert.match(agent.log(), /--cert-key .*tls\.key is not the private key of the certificate in --cert-file .*client\.crt/);
  });

  test("an agent whose server certificate lacks --server-name says so, and names those it carries", async () => {
    const server = track(await startServer());
    const agent = track(await startAgent(server.quicPort, { wait: false, args: ["--server-name", "tunnel.example.com"] }));
    await agent.waitFor(/does not carry --server-name tunnel\.example\.com; it carries CN=quic-tunnel-server, DNS:quic-tunnel-server/);
  });

  test("an agent whose server certificate another CA signed says which CA did", async () => {
    const foreign = foreignCerts();
    const server = track(await startServer({ certs: { ...foreign, ca: scratchCerts().ca } }));
    const agent = track(await startAgent(server.quicPort, { wait: false }));
    await agent.waitFor(/issued by CN=some-other-ca, not by a CA of --ca-file \(CN=quic-tunnel-dev-ca\)/);
  });
});

describe("agents that do not answer", { skip: SLOW_TRANSPORT }, () => {
  /**
   * An agent with a valid certificate that takes streams and never answers them: it leaves each
   * unread, or reads the CONNECT and says nothing.
   */
  async function mute(quicPort: number, behaviour: "never reads" | "reads, never answers" | "resets every stream") {
    const engine = await loadEngine("quiche");
    const connection = await engine.connect({
      host: "127.0.0.1",
      port: quicPort,
      serverName: "quic-tunnel-server",
      tls: clientTls(scratchCerts()),
    });
    connection.on("stream", (stream) => {
      stream.on("error", () => {});
      if (behaviour === "reads, never answers") stream.resume();
      if (behaviour === "resets every stream") stream.destroy(new Error("reset"));
    });
    return connection;
  }

  test("an agent that resets a stream before answering: its client gets 502 at once, and the agent is not counted as mute", async () => {
    const server = track(await startServer({ args: ["--agent-answer-timeout", "10s", "--admin-addr", "127.0.0.1:0"] }));
    const bad = await mute(server.quicPort, "resets every stream");
    try {
      await server.waitFor(/agents=1/);
      const started = performance.now();
      const reply = await rawExchange(server.tcpPort, connectGet(target.port), { timeoutMs: 5_000 });
      assert.match(reply, /^HTTP\/1\.1 502 Bad Gateway\r\n[\s\S]*ended the tunnel before answering/);
      assert.ok(performance.now() - started < 3_000, "answered at the reset, not at --agent-answer-timeout");
      assert.equal((await roleMetrics(server)).get("quic_tunnel_agent_answer_timeouts_total"), 0);
    } finally {
      bad.close();
    }
  });

  for (const behaviour of ["never reads", "reads, never answers"] as const) {
    test(`an agent that ${behaviour}: its clients get 504 at --agent-answer-timeout, and the good agent takes the tunnels after`, async () => {
      const server = track(await startServer({ args: ["--agent-answer-timeout", "1s", "--admin-addr", "127.0.0.1:0", "--v", "2"] }));
      track(await startAgent(server.quicPort));
      const bad = await mute(server.quicPort, behaviour);
      try {
        await server.waitFor(/agents=2/);
        // Round-robin sends every other client to the mute agent, until it has missed once.
        const started = performance.now();
        const replies = await Promise.all(
          Array.from({ length: 4 }, () => rawExchange(server.tcpPort, connectGet(target.port), { timeoutMs: 5_000 })),
        );
        const elapsed = performance.now() - started;
        const refused = replies.filter((reply) => /^HTTP\/1\.1 504 Gateway Timeout\r\n[\s\S]*did not answer within 1000 ms/.test(reply));
        assert.ok(refused.length >= 1, `some clients went to the mute agent: ${replies.map((reply) => reply.slice(0, 40)).join(" | ")}`);
        assert.equal(
          refused.length + replies.filter((reply) => /hello through the tunnel/.test(reply)).length,
          4,
          "every client got an answer",
        );
        assert.ok(elapsed < 3_000, `the clients were answered at the deadline, not at their own (${elapsed.toFixed(0)} ms)`);
        // Penalized, the mute agent gets no tunnel while the good one can take it.
        for (let i = 0; i < 6; i++)
          assert.match(await rawExchange(server.tcpPort, connectGet(target.port), { timeoutMs: 3_000 }), /hello through the tunnel/);
        // /metrics is rendered at most once a second: wait for a fresh one.
        await until(
          async () => (await roleMetrics(server)).get("quic_tunnel_agent_answer_timeouts_total") === refused.length,
          `the server to count ${refused.length} unanswered CONNECTs`,
        );
        assert.match(server.log(), /did not answer a CONNECT within 1000 ms; other agents take new tunnels first/);
      } finally {
        bad.close();
      }
    });
  }
});

/**
 * Interop with the Go reference (gardener/quic-reverse-http-tunnel as it ships, quic-go 0.42), on
 * each engine: our server, one replica (`--server-count 1`), with the reference's agent, and the
 * reference's server, which sends no hello, with our agent; and the passthrough agents both ways
 * (the stream-opened marker, lib/protocol.ts, only between ours). Needs the reference's binaries: set
 * QUIC_TUNNEL_REFERENCE to the directory holding quic-server and quic-client (the benchmarks take
 * the same); skipped without.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { httpTargetFixture, trackProcesses } from "./fixtures.ts";
import {
  agentArgs,
  curlDownload,
  ENGINES,
  expectedSha256,
  roleMetrics,
  run,
  SLOW_TRANSPORT,
  scratchCerts,
  sha256,
  spawnProcess,
  startAgent,
  startReferenceServer,
  startServer,
} from "./harness.ts";
import { until } from "./wait.ts";

const REFERENCE = process.env.QUIC_TUNNEL_REFERENCE;
const NO_REFERENCE =
  REFERENCE && ["quic-server", "quic-client", "quic-client-tcp"].every((binary) => existsSync(join(REFERENCE, binary)))
    ? undefined
    : "needs the Go reference's binaries: set QUIC_TUNNEL_REFERENCE to the directory of quic-server, quic-client and quic-client-tcp";

const track = trackProcesses();
const target = httpTargetFixture();

/**
 * Downloads 8 MiB through the server at `tcpPort` once the agent is there, and checks every byte.
 * curl, since it stops at the answer's length: the reference's agent keeps a tunnel open after its
 * target closed, until the client closes too.
 */
async function downloadIntact(tcpPort: number, options: { passthrough?: boolean } = {}): Promise<void> {
  const download = await until(async () => {
    const attempt = options.passthrough
      ? await run("curl", ["-sS", "--max-time", "30", `http://127.0.0.1:${tcpPort}/mib/8`])
      : await curlDownload(tcpPort, target.port, { mib: 8 });
    return attempt.code === 0 ? attempt : undefined;
  }, "a download through the agent");
  assert.equal(sha256(download.stdout), expectedSha256(8));
}

for (const engine of ENGINES) {
  describe(`the Go reference with our roles on ${engine}`, { skip: NO_REFERENCE ?? SLOW_TRANSPORT }, () => {
    test("our server, one replica (--server-count 1), with the reference's agent", async () => {
      const certs = scratchCerts();
      const server = track(await startServer({ certs, engine, args: ["--server-count", "1", "--server-id", "ours"] }));
      track(spawnProcess(join(REFERENCE as string, "quic-client"), agentArgs(`127.0.0.1:${server.quicPort}`, certs)));
      await downloadIntact(server.tcpPort);
    });

    test("the reference's server, which names no replica, with our agent: one connection, as the reference's agent holds", async () => {
      const certs = scratchCerts();
      const reference = await startReferenceServer(REFERENCE as string, certs);
      track(reference.server);
      const agent = track(await startAgent(reference.quicPort, { certs, engine, args: ["--admin-addr", "127.0.0.1:0"] }));
      await downloadIntact(reference.tcpPort);
      const metrics = await roleMetrics(agent);
      assert.equal(metrics.get("quic_tunnel_servers_wanted"), 1);
      assert.equal(metrics.get("quic_tunnel_servers_connected"), 1);
    });

    test("passthrough both ways: the reference's client-tcp with our server, our agent-tcp with the reference's server", async () => {
      const certs = scratchCerts();
      const ours = track(await startServer({ certs, engine, args: ["--passthrough"] }));
      const upstream = ["--upstream", `127.0.0.1:${target.port}`];
      track(spawnProcess(join(REFERENCE as string, "quic-client-tcp"), [...agentArgs(`127.0.0.1:${ours.quicPort}`, certs), ...upstream]));
      await downloadIntact(ours.tcpPort, { passthrough: true });
      const reference = await startReferenceServer(REFERENCE as string, certs);
      track(reference.server);
      track(await startAgent(reference.quicPort, { certs, engine, script: "agent-tcp.ts", args: upstream }));
      await downloadIntact(reference.tcpPort, { passthrough: true });
    });
  });
}

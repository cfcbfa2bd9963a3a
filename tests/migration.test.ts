/**
 * A NAT between agent and server that rebinds (the agent's packets arrive from a new port, and
 * what the server sends to the old one is lost), on each engine with the real roles: transfers in
 * flight and an idle tunnel opened before survive it, or the engine says it cannot and its tunnels
 * fail rather than hang.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { loadEngine } from "../lib/transport/mod.ts";
import { trackProcesses } from "./fixtures.ts";
import {
  ENGINES,
  openTunnel,
  SLOW_TRANSPORT,
  startAgent,
  startHttpTarget,
  startLossyRelay,
  startServer,
  transferBothWays,
} from "./harness.ts";
import { until } from "./wait.ts";

const track = trackProcesses();

/** Sends `text` through an open tunnel to an echo target and resolves with what comes back. */
function echoThrough(socket: net.Socket, text: string): Promise<string> {
  let answer = "";
  return new Promise((resolve, reject) => {
    socket.on("data", (chunk: Buffer) => {
      answer += chunk.toString("latin1");
      if (answer.length >= text.length) resolve(answer);
    });
    socket.once("error", reject);
    socket.write(text);
  });
}

for (const engine of ENGINES) {
  describe(`a NAT rebinding between agent and server, engine ${engine}`, { skip: SLOW_TRANSPORT }, () => {
    let target: Awaited<ReturnType<typeof startHttpTarget>>;
    // The idle tunnel's target: an HTTP server may close a connection that sends it nothing.
    const echo = net.createServer((socket) => socket.on("error", () => {}).pipe(socket));
    before(async () => {
      target = await startHttpTarget();
      await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
    });
    after(async () => {
      await target.close();
      await new Promise((resolve) => echo.close(resolve));
    });

    test("64 MiB down and up in flight across two rebindings arrive intact, an idle tunnel still works, the agent stays; or they fail and the agent reconnects", async (t) => {
      const { rebindingCaveat } = await loadEngine(engine);
      const server = track(await startServer({ engine }));
      const relay = await startLossyRelay(server.quicPort, { loss: 0 });
      const agent = track(await startAgent(relay.port, { engine }));
      const idle = await openTunnel(server.tcpPort, (echo.address() as net.AddressInfo).port);
      const started = performance.now();
      // Rate-limited so that both are still in flight at each rebinding.
      const transfers = transferBothWays(server.tcpPort, target.port, { mib: 64, rate: "16M" });
      const moved = async (datagrams: number) => {
        const from = (await relay.stats()).forwarded;
        await until(async () => (await relay.stats()).forwarded >= from + datagrams, `${datagrams} more datagrams through the relay`, {
          timeoutMs: 20_000,
        });
        await relay.rebind();
      };
      try {
        await moved(5_000);
        if (rebindingCaveat === undefined) await moved(10_000);
        const both = await transfers;
        const seconds = ((performance.now() - started) / 1000).toFixed(1);
        if (rebindingCaveat !== undefined) {
          assert.ok(both.down.code !== 0 || both.up.code !== 0, `the engine says it cannot keep the connection (${rebindingCaveat})`);
          await agent.waitFor(/connection to server .* lost[\s\S]*connected to server/);
          return;
        }
        // 64 MiB at 16 MiB/s takes 4 s: what is beyond is the time the transfers paused.
        t.diagnostic(`both transfers took ${seconds} s across two rebindings (4 s at the rate limit)`);
        both.assertIntact();
        assert.equal(await echoThrough(idle, "still here"), "still here");
        assert.doesNotMatch(agent.log(), /connection to server .* lost|cannot connect/, "the agent kept its connection");
        assert.equal(server.log().match(/agent \S+ moved to 127\.0\.0\.1:\d+/g)?.length, 2, "the server logged both moves");
      } finally {
        idle.destroy();
        await relay.stop();
      }
    });
  });
}

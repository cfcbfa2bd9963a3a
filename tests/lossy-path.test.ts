/**
 * A path with loss and delay. `tc netem` is not available on these machines (the kernel has no
 * netem qdisc), so a UDP relay in the test process drops 1% of the datagrams in each direction
 * and delays every one by 10 ms (20 ms RTT) between the agent and the server.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { test } from "node:test";
import { trackProcesses } from "./fixtures.ts";
import { expectedSha256, run, SLOW_TRANSPORT, sha256, startAgent, startHttpTarget, startServer } from "./harness.ts";

/** Relays UDP between one client and `serverPort`, dropping `loss` of the datagrams and delaying all. */
async function lossyRelay(serverPort: number, options: { loss: number; delayMs: number }) {
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const counts = { forwarded: 0, dropped: 0 };
  const front = dgram.createSocket("udp4");
  const back = dgram.createSocket("udp4");
  let client: { address: string; port: number } | undefined;
  let open = true;
  const pass = (send: () => void) => {
    if (!open) return;
    if (random() < options.loss) {
      counts.dropped++;
      return;
    }
    counts.forwarded++;
    setTimeout(() => open && send(), options.delayMs);
  };
  front.on("message", (message, rinfo) => {
    client = { address: rinfo.address, port: rinfo.port };
    pass(() => back.send(message, serverPort, "127.0.0.1"));
  });
  back.on("message", (message) => {
    const to = client;
    if (to) pass(() => front.send(message, to.port, to.address));
  });
  await new Promise<void>((resolve) => front.bind(0, "127.0.0.1", resolve));
  await new Promise<void>((resolve) => back.bind(0, "127.0.0.1", resolve));
  return {
    port: front.address().port,
    counts,
    close: () => {
      open = false;
      front.close();
      back.close();
    },
  };
}

const track = trackProcesses();
test("a transfer over a path with 1% loss and 20 ms RTT completes intact", { skip: SLOW_TRANSPORT }, async () => {
  const target = await startHttpTarget();
  const server = await startServer();
  track(server);
  const relay = await lossyRelay(server.quicPort, { loss: 0.01, delayMs: 10 });
  track(await startAgent(relay.port));
  const result = await run("curl", [
    "-sS",
    "--max-time",
    "90",
    "-p",
    "--proxy",
    `127.0.0.1:${server.tcpPort}`,
    `http://127.0.0.1:${target.port}/mib/8`,
  ]);
  relay.close();
  await target.close();
  assert.equal(result.code, 0, result.stderr);
  assert.equal(sha256(result.stdout), expectedSha256(8));
  assert.ok(
    relay.counts.dropped > 20,
    `the relay dropped ${relay.counts.dropped} of ${relay.counts.forwarded + relay.counts.dropped} datagrams`,
  );
});

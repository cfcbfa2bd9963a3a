/**
 * Paths that only network namespaces can make on one machine: server and agent in two namespaces
 * of their own, joined by a veth pair whose MTU is 1280 (as on VPNs and some overlays), and an
 * agent whose own address changes under it. Addresses come from 198.18.0.0/15, the range set aside
 * for benchmark networks. Needs root and `ip netns`; skipped, with the reason, where those are missing.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, test } from "node:test";
import { httpTargetProcess, trackProcesses } from "./fixtures.ts";
import { expectedSha256, run, SLOW_TRANSPORT, sha256, startAgent, startServer, transferBothWays } from "./harness.ts";

const SERVER_NS = `qt-srv-${process.pid}`;
const AGENT_NS = `qt-agt-${process.pid}`;
const SERVER_IP = "198.18.0.1";
const AGENT_IP = "198.18.0.2";
/** The agent's address after it moves (a DHCP renewal, a failover), in the same /29. */
const AGENT_NEW_IP = "198.18.0.3";

function ip(args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

let unavailable = "";
const track = trackProcesses();
let targetPort = 0;
let stopTarget = () => {};

before(async () => {
  try {
    ip(["netns", "add", SERVER_NS]);
    ip(["netns", "add", AGENT_NS]);
    ip(["link", "add", "qts0", "netns", SERVER_NS, "type", "veth", "peer", "name", "qta0", "netns", AGENT_NS]);
    ip(["-n", SERVER_NS, "addr", "add", `${SERVER_IP}/29`, "dev", "qts0"]);
    ip(["-n", AGENT_NS, "addr", "add", `${AGENT_IP}/29`, "dev", "qta0"]);
    // Deleting the agent's first address must leave the second (not take it along, the default).
    execFileSync("ip", ["netns", "exec", AGENT_NS, "sysctl", "-qw", "net.ipv4.conf.qta0.promote_secondaries=1"]);
    for (const [ns, dev] of [
      [SERVER_NS, "qts0"],
      [AGENT_NS, "qta0"],
    ]) {
      ip(["-n", ns, "link", "set", dev, "mtu", "1280", "up"]);
      ip(["-n", ns, "link", "set", "lo", "up"]);
    }
  } catch (err) {
    unavailable = `network namespaces unavailable here: ${(err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message}`;
    return;
  }
  const target = await httpTargetProcess({ netns: AGENT_NS });
  stopTarget = target.stop;
  targetPort = target.port;
});

after(async () => {
  stopTarget();
  for (const ns of [SERVER_NS, AGENT_NS]) {
    try {
      ip(["netns", "del", ns]);
    } catch {
      // not created
    }
  }
});

async function tunnel(args: string[]) {
  const server = await startServer({ netns: SERVER_NS, quicHost: SERVER_IP, args });
  track(server);
  const agent = await startAgent(server.quicPort, { netns: AGENT_NS, serverHost: SERVER_IP, args });
  track(agent);
  return { server, agent };
}

/** IP fragments this namespace's kernel had to create (packets larger than the link MTU). */
function fragmentsCreated(ns: string): number {
  const snmp = execFileSync("ip", ["netns", "exec", ns, "cat", "/proc/net/snmp"], { encoding: "utf8" }).split("\n");
  const [names, values] = snmp.filter((line) => line.startsWith("Ip:")).map((line) => line.split(/\s+/));
  return Number(values[names.indexOf("FragCreates")]);
}

async function download(server: { tcpPort: number }, mib: number, curlArgs: string[] = []) {
  return await run("ip", [
    "netns",
    "exec",
    SERVER_NS,
    "curl",
    "-sS",
    ...curlArgs,
    "--max-time",
    "60",
    "-p",
    "--proxy",
    `127.0.0.1:${server.tcpPort}`,
    `http://127.0.0.1:${targetPort}/mib/${mib}`,
  ]);
}

test("the default UDP payload fits a 1280-byte MTU path: 16 MiB intact, no IP fragmentation", { skip: SLOW_TRANSPORT }, async (t) => {
  if (unavailable) return void t.skip(unavailable);
  const before = fragmentsCreated(SERVER_NS) + fragmentsCreated(AGENT_NS);
  const { server, agent } = await tunnel([]);
  const result = await download(server, 16);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(sha256(result.stdout), expectedSha256(16));
  assert.equal(fragmentsCreated(SERVER_NS) + fragmentsCreated(AGENT_NS) - before, 0, "no packet exceeded the path MTU");
  await Promise.all([server.stop(), agent.stop()]);
});

test("--max-udp-payload 1452 sends packets that do not fit the path (the kernel must fragment them)", {
  skip: SLOW_TRANSPORT,
}, async (t) => {
  if (unavailable) return void t.skip(unavailable);
  const before = fragmentsCreated(SERVER_NS) + fragmentsCreated(AGENT_NS);
  const { server, agent } = await tunnel(["--max-udp-payload", "1452"]);
  await download(server, 4);
  assert.ok(fragmentsCreated(SERVER_NS) + fragmentsCreated(AGENT_NS) - before > 0, "oversized packets were fragmented");
  await Promise.all([server.stop(), agent.stop()]);
});

test("the agent's own address changes under transfers, the agent told nothing: 64 MiB down and up intact, no reconnect (quiche)", {
  skip: SLOW_TRANSPORT,
}, async (t) => {
  if (unavailable) return void t.skip(unavailable);
  const { server, agent } = await tunnel(["--quic-engine", "quiche"]);
  // 64 MiB each way at 16 MiB/s: some 4 s, so the address changes with most of both still to come.
  const started = performance.now();
  const transfers = transferBothWays(server.tcpPort, targetPort, { mib: 64, rate: "16M", prefix: ["ip", "netns", "exec", SERVER_NS] });
  await new Promise((resolve) => setTimeout(resolve, 1_000)); // a fixed point in the transfers is the point: a second in
  ip(["-n", AGENT_NS, "addr", "add", `${AGENT_NEW_IP}/29`, "dev", "qta0"]);
  ip(["-n", AGENT_NS, "addr", "del", `${AGENT_IP}/29`, "dev", "qta0"]);
  try {
    const both = await transfers;
    t.diagnostic(`both took ${((performance.now() - started) / 1000).toFixed(1)} s across the move (4 s at the rate limit)`);
    both.assertIntact();
    assert.match(server.log(), new RegExp(`agent \\S+ moved to ${AGENT_NEW_IP.replaceAll(".", "\\.")}:\\d+`));
    assert.doesNotMatch(agent.log(), /connection to server .* lost/, "the agent kept its connection");
  } finally {
    ip(["-n", AGENT_NS, "addr", "add", `${AGENT_IP}/29`, "dev", "qta0"]);
    ip(["-n", AGENT_NS, "addr", "del", `${AGENT_NEW_IP}/29`, "dev", "qta0"]);
    await Promise.all([server.stop(), agent.stop()]);
  }
});

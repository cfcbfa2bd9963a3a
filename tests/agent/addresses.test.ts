import assert from "node:assert/strict";
import { test } from "node:test";
import { ServerAddresses } from "../../lib/agent/addresses.ts";

test("every address given, and every address a name resolves to, each seat starting at its own", async () => {
  const names: Record<string, string[]> = { "replicas.test": ["10.0.0.3", "10.0.0.2", "10.0.0.3"] };
  const addresses = new ServerAddresses(
    [
      { host: "10.0.0.1", port: 8888 },
      { host: "replicas.test", port: 8888 },
    ],
    { resolve: async (host) => names[host] ?? [] },
  );
  await addresses.start();
  addresses.stop();
  assert.deepEqual(
    addresses.list.map((address) => address.host),
    ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
  );
  assert.deepEqual(
    [0, 1, 2].map((seat) => addresses.pick(seat, 0).host),
    ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
  );
  assert.equal(addresses.pick(0, 1).host, "10.0.0.2", "a failed or duplicate dial moves the seat on");
});

test("a name that does not resolve is kept as given; a lookup that changes the count is told", async () => {
  let ips: string[] = [];
  const counts: number[] = [];
  const addresses = new ServerAddresses([{ host: "replicas.test", port: 8888 }], { resolve: async () => ips });
  await addresses.start((count) => counts.push(count));
  addresses.stop();
  assert.deepEqual(addresses.list, [{ host: "replicas.test", port: 8888 }], "dialing it fails with the engine's words");
  ips = ["10.0.0.2", "10.0.0.3"];
  await addresses.refresh();
  assert.equal(addresses.size, 2);
  assert.deepEqual(counts, [2]);
});

test("how many entries --server gave, apart from what they resolve to", async () => {
  const addresses = new ServerAddresses([{ host: "replicas.test", port: 8888 }], { resolve: async () => ["10.0.0.2", "10.0.0.3"] });
  await addresses.start();
  addresses.stop();
  assert.equal(addresses.size, 2);
  assert.equal(addresses.given, 1);
});

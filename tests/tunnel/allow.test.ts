import assert from "node:assert/strict";
import { test } from "node:test";
import { AllowList, parseAllowRule } from "../../lib/tunnel/allow.ts";

const fakeDns: Record<string, string[]> = {
  "kubelet.node1.local": ["10.1.2.3"],
  "rebind.example.com": ["169.254.169.254"],
  "dual.example.com": ["192.168.9.9", "10.9.9.9"],
};
const resolve = async (host: string) => {
  const found = fakeDns[host.toLowerCase()];
  if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
  return found;
};

test("no rules allows everything (the reference's behaviour)", async () => {
  const list = new AllowList([]);
  assert.equal(list.allowsAll, true);
  assert.deepEqual(await list.check({ host: "anything", port: 1 }), { allowed: true, address: "anything" });
});

test("names, wildcards, ports, lists and ranges", async () => {
  const list = new AllowList(["*.node1.local:10250", "api.example.com:443,8000-8010"], { resolve });
  assert.equal((await list.check({ host: "kubelet.node1.local", port: 10250 })).allowed, true);
  assert.equal((await list.check({ host: "KUBELET.Node1.local", port: 10250 })).allowed, true);
  assert.equal((await list.check({ host: "kubelet.node1.local", port: 22 })).allowed, false);
  assert.equal((await list.check({ host: "node1.local", port: 10250 })).allowed, false, "*.domain needs a label before the domain");
  assert.equal((await list.check({ host: "evilnode1.local", port: 10250 })).allowed, false);
  await assert.rejects(list.check({ host: "api.example.com", port: 8005 }), /ENOTFOUND/, "a name that does not resolve is a dial failure");
});

test("CIDR rules match IP targets and the addresses names resolve to, and the checked address is dialed", async () => {
  const list = new AllowList(["10.0.0.0/8", "[fd00::/8]:22"], { resolve });
  assert.deepEqual(await list.check({ host: "10.200.0.1", port: 80 }), { allowed: true, address: "10.200.0.1" });
  assert.equal((await list.check({ host: "11.0.0.1", port: 80 })).allowed, false);
  assert.equal((await list.check({ host: "fd12::1", port: 22 })).allowed, true);
  assert.equal((await list.check({ host: "fd12::1", port: 23 })).allowed, false);
  assert.equal((await list.check({ host: "fe80::1", port: 22 })).allowed, false);
  assert.deepEqual(await list.check({ host: "kubelet.node1.local", port: 10250 }), { allowed: true, address: "10.1.2.3" });
  assert.deepEqual(await list.check({ host: "dual.example.com", port: 80 }), { allowed: true, address: "10.9.9.9" });
  const rebinding = await list.check({ host: "rebind.example.com", port: 80 });
  assert.equal(rebinding.allowed, false);
  assert.match(rebinding.allowed ? "" : rebinding.reason, /not allowed by the agent's --allow rules/);
});

test("malformed rules are errors that quote the rule", () => {
  for (const bad of ["10.0.0.0/33", "host:0", "host:9-1", "ho st", "[fd00::/8", "*.:80", "a/b"]) {
    assert.throws(
      () => parseAllowRule(bad),
      (err: Error) => err.message.startsWith(`--allow ${bad}`),
      bad,
    );
  }
  assert.deepEqual(parseAllowRule("*:443").ports, [[443, 443]]);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import ipaddr from "ipaddr.js";
import { AllowList, parseAllowRule, type Verdict } from "../../lib/tunnel/allow.ts";

const fakeDns: Record<string, string[]> = {
  "kubelet.node1.local": ["10.1.2.3"],
  "rebind.example.com": ["169.254.169.254"],
  "dual.example.com": ["192.168.9.9", "10.9.9.9"],
  "mapped.example.com": ["::ffff:127.0.0.1"],
};
const resolve = async (host: string) => {
  const found = fakeDns[host.toLowerCase()];
  if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
  return found;
};
const dialed = (verdict: Verdict) => (verdict.allowed ? verdict.address.dial : `denied: ${verdict.reason}`);

test("no rules allows everything (the reference's behaviour), dialing the resolved address", async () => {
  const list = new AllowList([], { resolve });
  assert.equal(list.allowsAll, true);
  assert.equal(dialed(await list.check({ host: "kubelet.node1.local", port: 1 })), "10.1.2.3");
  assert.equal(dialed(await list.check({ host: "::ffff:7f00:1", port: 1 })), "127.0.0.1");
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
  assert.equal(dialed(await list.check({ host: "10.200.0.1", port: 80 })), "10.200.0.1");
  assert.equal((await list.check({ host: "11.0.0.1", port: 80 })).allowed, false);
  assert.equal((await list.check({ host: "fd12::1", port: 22 })).allowed, true);
  assert.equal((await list.check({ host: "fd12::1", port: 23 })).allowed, false);
  assert.equal((await list.check({ host: "fe80::1", port: 22 })).allowed, false);
  assert.equal(dialed(await list.check({ host: "kubelet.node1.local", port: 10250 })), "10.1.2.3");
  assert.equal(dialed(await list.check({ host: "dual.example.com", port: 80 })), "10.9.9.9");
  const rebinding = await list.check({ host: "rebind.example.com", port: 80 });
  assert.equal(rebinding.allowed, false);
  assert.match(rebinding.allowed ? "" : rebinding.reason, /not allowed by the agent's --allow rules/);
});

test("an IPv6 rule never lets an IPv4 host through, however the client spells it", async () => {
  const list = new AllowList(["[::/0]:8080"], { resolve });
  for (const spelling of [
    "::ffff:7f00:1",
    "0:0:0:0:0:ffff:127.0.0.1",
    "::ffff:127.0.0.1%lo",
    "0000:0000:0000:0000:0000:ffff:7f00:0001",
    "::FFFF:127.0.0.2",
    "mapped.example.com",
  ]) {
    assert.equal((await list.check({ host: spelling, port: 8080 })).allowed, false, spelling);
  }
  assert.equal((await list.check({ host: "::1", port: 8080 })).allowed, true);
  const v4 = new AllowList(["127.0.0.0/8"]);
  assert.equal(dialed(await v4.check({ host: "::ffff:7f00:2", port: 80 })), "127.0.0.2", "mapped spellings are IPv4 for IPv4 rules");
  assert.equal(dialed(await v4.check({ host: "2130706433", port: 80 })), "127.0.0.1", "the integer form resolves as the dialer reads it");
  assert.equal(dialed(await v4.check({ host: "0177.0.0.1", port: 80 })), "127.0.0.1");
  assert.equal(dialed(await v4.check({ host: "127.1", port: 80 })), "127.0.0.1");
});

test("property: for any spelling of a target, the tunnel is allowed exactly when its dialed address matches a rule", async () => {
  const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((bytes) => bytes.join("."));
  const ipv6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((groups) => groups.map((g) => g.toString(16)).join(":"));
  // A target: an address (as the kernel dials it) and one of the ways a client can write it.
  const target = fc.oneof(
    fc.tuple(ipv4, fc.constantFrom("dotted", "mapped", "mapped-hex", "mapped-long", "mapped-zone", "integer")).map(([ip, style]) => {
      const [a, b, c, d] = ip.split(".").map(Number);
      const hex = `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
      const spelled = {
        dotted: ip,
        mapped: `::ffff:${ip}`,
        "mapped-hex": `::ffff:${hex}`,
        "mapped-long": `0000:0000:0000:0000:0000:FFFF:${hex}`,
        "mapped-zone": `::ffff:${ip}%lo`,
        integer: String(((a << 24) >>> 0) + (b << 16) + (c << 8) + d),
      }[style];
      return { spelled, dialed: ip, family: 4 as const };
    }),
    fc.tuple(ipv6, fc.boolean()).map(([ip, zone]) => {
      const parsed = ipaddr.IPv6.parse(ip);
      const dialedIp = parsed.isIPv4MappedAddress() ? parsed.toIPv4Address().toString() : parsed.toString();
      return { spelled: zone ? `${ip}%eth0` : ip, dialed: dialedIp, family: parsed.isIPv4MappedAddress() ? (4 as const) : (6 as const) };
    }),
  );
  const rule = fc.oneof(
    fc.tuple(ipv4, fc.nat(32)).map(([ip, bits]) => `${ip}/${bits}`),
    fc.tuple(ipv6, fc.nat(128)).map(([ip, bits]) => `[${ip}/${bits}]`),
  );
  await fc.assert(
    fc.asyncProperty(target, fc.array(rule, { minLength: 1, maxLength: 4 }), async (t, rules) => {
      const verdict = await new AllowList(rules).check({ host: t.spelled, port: 443 });
      const address = ipaddr.parse(t.dialed);
      const expected = rules.some((text) => {
        const [network, bits] = ipaddr.parseCIDR(text.replace(/^\[|\]$/g, ""));
        const processed = network.kind() === "ipv6" && (network as ipaddr.IPv6).isIPv4MappedAddress() ? null : network;
        return processed !== null && processed.kind() === address.kind() && address.match(processed, bits);
      });
      assert.equal(verdict.allowed, expected, `${t.spelled} (dialed ${t.dialed}) against ${rules.join(" ")}`);
      if (verdict.allowed) assert.equal(verdict.address.ip, address.toString());
    }),
    { numRuns: 500 },
  );
});

test("malformed rules are errors that quote the rule", () => {
  for (const bad of ["10.0.0.0/33", "host:0", "host:9-1", "ho st", "[fd00::/8", "*.:80", "a/b", "[::/129]"]) {
    assert.throws(
      () => parseAllowRule(bad),
      (err: Error) => err.message.startsWith(`--allow ${bad}`),
      bad,
    );
  }
  assert.deepEqual(parseAllowRule("*:443").ports, [[443, 443]]);
});

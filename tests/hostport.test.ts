import assert from "node:assert/strict";
import { test } from "node:test";
import { formatHostPort, parseHostPort } from "../lib/hostport.ts";

test("parses host names, IPv4 and bracketed IPv6 with ports", () => {
  assert.deepEqual(parseHostPort("localhost:8888"), { host: "localhost", port: 8888 });
  assert.deepEqual(parseHostPort("10.0.0.1:443"), { host: "10.0.0.1", port: 443 });
  assert.deepEqual(parseHostPort("[::1]:10443"), { host: "::1", port: 10443 });
  assert.deepEqual(parseHostPort("[fe80::1%eth0]:22"), { host: "fe80::1%eth0", port: 22 });
  assert.deepEqual(parseHostPort(":8443"), { host: "0.0.0.0", port: 8443 });
  assert.deepEqual(parseHostPort("kubelet.kube-system.svc:10250"), { host: "kubelet.kube-system.svc", port: 10250 });
});

test("rejects what is not exactly host:port", () => {
  for (const bad of [
    "",
    "host",
    "host:",
    "host:99999",
    "host:-1",
    "::1:80",
    "[::1]80",
    "[::1]",
    "ho st:80",
    "a/b:80",
    "host:80x",
    "[host]:80",
  ]) {
    assert.equal(parseHostPort(bad), undefined, bad);
  }
});

test("formats back, bracketing IPv6", () => {
  assert.equal(formatHostPort({ host: "::1", port: 1 }), "[::1]:1");
  assert.equal(formatHostPort({ host: "example.com", port: 80 }), "example.com:80");
});

/** The role scripts' command lines: help, version, bad flags and unreadable files. */
import assert from "node:assert/strict";
import { test } from "node:test";
import pkg from "../package.json" with { type: "json" };
import { run, runtimeCommand, scratchCerts, serverTlsArgs, spawnRole } from "./harness.ts";

const ROLES = {
  "server.ts": ["--listen-tcp", "--listen-quic", "--cert-file", "--cert-key", "--client-ca-file", "--v", "--max-udp-payload", "--alpn"],
  "agent.ts": ["--server", "--ca-file", "--cert-file", "--cert-key", "--v", "--server-name", "--dial-timeout", "--max-header-bytes"],
  "agent-tcp.ts": ["--server", "--ca-file", "--cert-file", "--cert-key", "--v", "--upstream"],
};

function runRole(script: string, args: string[]) {
  const [command, base] = runtimeCommand(script);
  return run(command, [...base, ...args], { timeoutMs: 20_000 });
}

for (const [script, flags] of Object.entries(ROLES)) {
  test(`${script} --help explains every flag and exits 0`, async () => {
    const result = await runRole(script, ["--help"]);
    assert.equal(result.code, 0, result.stderr);
    const text = result.stdout.toString();
    for (const flag of flags) assert.match(text, new RegExp(`^  ${flag} `, "m"), `${flag} in help`);
  });
}

test("--version prints package.json's version", async () => {
  const result = await runRole("server.ts", ["--version"]);
  assert.equal(result.stdout.toString(), `quic-server ${pkg.version}\n`);
});

test("a bad flag exits 2 with a message that names it", async () => {
  const unknown = await runRole("agent.ts", ["--no-such-flag"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /no-such-flag/);
  const badValue = await runRole("server.ts", ["--listen-tcp", "nowhere", "--cert-file", "a", "--cert-key", "b", "--client-ca-file", "c"]);
  assert.equal(badValue.code, 2);
  assert.match(badValue.stderr, /--listen-tcp: expected host:port/);
  const missing = await runRole("agent-tcp.ts", ["--ca-file", "a", "--cert-file", "b", "--cert-key", "c"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--upstream is required/);
});

test("an unreadable or wrong certificate file exits 1 naming the flag", async () => {
  const certs = scratchCerts();
  const absent = await runRole("server.ts", [
    "--cert-file",
    "/nonexistent.crt",
    "--cert-key",
    certs.serverKey,
    "--client-ca-file",
    certs.ca,
  ]);
  assert.equal(absent.code, 1);
  assert.match(absent.stderr, /--cert-file: cannot read \/nonexistent\.crt: ENOENT/);
  const swapped = await runRole("agent.ts", ["--ca-file", certs.ca, "--cert-file", certs.clientKey, "--cert-key", certs.clientKey]);
  assert.equal(swapped.code, 1);
  assert.match(swapped.stderr, /--cert-file: .* holds no PEM/);
});

test("a port in use is a clear start-up error", async () => {
  const first = spawnRole("server.ts", ["--listen-tcp", "127.0.0.1:0", "--listen-quic", "127.0.0.1:0", ...serverTlsArgs(scratchCerts())]);
  const match = await first.waitFor(/tcp=127\.0\.0\.1:(\d+) quic=127\.0\.0\.1:(\d+)/);
  const second = await runRole("server.ts", [
    "--listen-tcp",
    `127.0.0.1:${match[1]}`,
    "--listen-quic",
    "127.0.0.1:0",
    ...serverTlsArgs(scratchCerts()),
  ]);
  await first.stop();
  assert.equal(second.code, 1);
  assert.match(second.stderr, /cannot listen for TCP on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
});

test("the reference's own Makefile command lines, klog flags and all, run each role", async () => {
  const certs = scratchCerts();
  // As the reference's Makefile starts them (certificates from our test set, and klog flags that
  // manifests written for the reference add).
  const server = spawnRole("server.ts", [
    "--listen-tcp",
    "127.0.0.1:10443",
    "--listen-quic",
    "127.0.0.1:8888",
    "--cert-file",
    certs.serverCert,
    "--cert-key",
    certs.serverKey,
    "--client-ca-file",
    certs.ca,
    "--v=2",
    "-logtostderr=true",
    "-alsologtostderr",
  ]);
  try {
    await server.waitFor(/server started/);
    assert.match(server.log(), /with no effect: -alsologtostderr -logtostderr/);
    const agentFlags = [
      `--server=localhost:8888`,
      "--ca-file",
      certs.ca,
      "--cert-file",
      certs.clientCert,
      "--cert-key",
      certs.clientKey,
      "--v=2",
    ];
    const agent = spawnRole("agent.ts", agentFlags);
    const agentTcp = spawnRole("agent-tcp.ts", [...agentFlags, "--upstream=www.example.com:80"]);
    try {
      await agent.waitFor(/connected to server/);
      await agentTcp.waitFor(/connected to server/);
      const help = await runRole("agent-tcp.ts", ["-h"]);
      assert.equal(help.code, 0);
      assert.match(help.stdout.toString(), /^Usage: quic-agent-tcp /);
    } finally {
      await agent.stop();
      await agentTcp.stop();
    }
  } finally {
    await server.stop();
  }
});

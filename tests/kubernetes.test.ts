/**
 * deploy/kubernetes: every flag the manifests pass is one the role knows, and the tunnel answers
 * kube-apiserver's egress dial exactly as kube-apiserver requires, over TLS with a client
 * certificate and over a Unix socket.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { test } from "node:test";
import { connect as connectTls } from "node:tls";
import { httpTargetFixture, trackProcesses } from "./fixtures.ts";
import { ROOT, run, runtimeCommand, SLOW_TRANSPORT, scratchCerts, startAgent, startServer } from "./harness.ts";

const track = trackProcesses();
const target = httpTargetFixture();
const MANIFESTS = join(ROOT, "deploy", "kubernetes");
/** The manifests: the default set, and the high-availability variant in ha/. */
const MANIFEST_FILES = ["", "ha"].flatMap((dir) =>
  readdirSync(join(MANIFESTS, dir))
    .filter((name) => name.endsWith(".yaml"))
    .map((name) => join(dir, name)),
);
const ROLE_OF_CONTAINER: Record<string, string> = { server: "server.ts", agent: "agent.ts", "agent-tcp": "agent-tcp.ts" };

/** Each container of the manifests with the flags its args pass (one `- --flag=value` per line). */
function containerFlags(): Array<{ file: string; container: string; flags: string[] }> {
  const found: Array<{ file: string; container: string; flags: string[] }> = [];
  for (const file of MANIFEST_FILES) {
    let current: { file: string; container: string; flags: string[] } | undefined;
    let inArgs = false;
    for (const line of readFileSync(join(MANIFESTS, file), "utf8").split("\n")) {
      const container = /^\s*- name: (\S+)$/.exec(line);
      if (container && ROLE_OF_CONTAINER[container[1]]) {
        current = { file, container: container[1], flags: [] };
        found.push(current);
        continue;
      }
      if (/^\s*args:\s*$/.test(line)) {
        inArgs = true;
        continue;
      }
      const flag = /^\s*- (--[a-z][a-z0-9-]*)(=|$)/.exec(line);
      if (inArgs && flag && current) current.flags.push(flag[1]);
      else inArgs = false;
    }
  }
  return found;
}

test("the high-availability server tells agents as many replicas as it runs", () => {
  const server = readFileSync(join(MANIFESTS, "ha", "server.yaml"), "utf8");
  const replicas = /^\s*replicas: (\d+)$/m.exec(server)?.[1];
  assert.equal(/--server-count=(\d+)/.exec(server)?.[1], replicas, "--server-count is the Deployment's replicas");
  assert.match(server, /--server-id=\$\(POD_NAME\)/, "each replica names itself");
  for (const file of ["server.yaml", join("ha", "server.yaml")]) {
    // Ready means "has an agent", and agents come in through this Service: it must reach replicas not ready yet.
    assert.match(readFileSync(join(MANIFESTS, file), "utf8"), /type: LoadBalancer\n(?:\s*#.*\n)*\s*publishNotReadyAddresses: true/, file);
  }
  assert.match(readFileSync(join(MANIFESTS, "ha", "agent.yaml"), "utf8"), /--agent-identifiers=host=\$\(NODE_NAME\)&ipv4=\$\(NODE_IP\)/);
});

test("every flag the Kubernetes manifests pass is in the role's --help", async () => {
  const containers = containerFlags();
  assert.ok(containers.length >= 2, "the manifests have a server and an agent container");
  for (const { file, container, flags } of containers) {
    assert.ok(flags.length > 3, `${file}: the ${container} container passes its flags`);
    const [command, base] = runtimeCommand(ROLE_OF_CONTAINER[container]);
    const help = (await run(command, [...base, "--help"])).stdout.toString();
    for (const flag of flags) assert.match(help, new RegExp(`^  ${flag} `, "m"), `${file}: ${container} ${flag}`);
  }
});

/**
 * kube-apiserver's HTTPConnect dial: exactly this request; then it needs the status line to say
 * 200 and no byte after the response head before it writes itself (its reader would take them as
 * the start of the tunnelled stream).
 */
async function egressDial(socket: Duplex, targetPort: number): Promise<string> {
  socket.write(`CONNECT 127.0.0.1:${targetPort} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  let received = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.includes("\r\n\r\n")) {
        socket.off("data", onData);
        resolve();
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
  const head = received.toString("latin1");
  assert.equal(head.split("\r\n")[0], "HTTP/1.1 200 OK", "status 200 exactly");
  assert.equal(head.indexOf("\r\n\r\n") + 4, received.length, "no byte after the response head");
  // Nothing may follow before kube-apiserver speaks: give a stray byte the time to arrive.
  const stray = await new Promise<Buffer | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 200);
    socket.once("data", (chunk: Buffer) => {
      clearTimeout(timer);
      resolve(chunk);
    });
  });
  assert.equal(stray, undefined, "no byte before the client's request");
  socket.end("GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n");
  let answer = "";
  socket.on("data", (chunk: Buffer) => {
    answer += chunk.toString("latin1");
  });
  await new Promise((resolve) => socket.once("close", resolve));
  return answer;
}

test("kube-apiserver's egress dial over TLS with a client certificate gets 200 and a clean stream", { skip: SLOW_TRANSPORT }, async () => {
  const certs = scratchCerts();
  const server = track(
    await startServer({ args: ["--tcp-cert-file", certs.serverCert, "--tcp-cert-key", certs.serverKey, "--tcp-client-ca-file", certs.ca] }),
  );
  track(await startAgent(server.quicPort));
  const socket = connectTls({
    host: "127.0.0.1",
    port: server.tcpPort,
    ca: readFileSync(certs.ca),
    cert: readFileSync(certs.clientCert),
    key: readFileSync(certs.clientKey),
    servername: "localhost",
  });
  await new Promise((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  assert.match(await egressDial(socket, target.port), /^HTTP\/1\.1 200 OK\r\n[\s\S]*hello through the tunnel/);
});

test("kube-apiserver's egress dial over the Unix socket gets the same", { skip: SLOW_TRANSPORT }, async () => {
  const path = join(tmpdir(), `quic-tunnel-egress-${process.pid}.sock`);
  const server = track(await startServer({ args: ["--listen-uds", path] }));
  track(await startAgent(server.quicPort));
  const socket = net.connect(path);
  await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  assert.match(await egressDial(socket, target.port), /^HTTP\/1\.1 200 OK\r\n[\s\S]*hello through the tunnel/);
});

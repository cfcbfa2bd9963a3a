/**
 * The TCP transport's server beyond the conformance suite: what it counts as a handshake, and what
 * its close() does to agents in each state.
 *
 * @module
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import tls from "node:tls";
import { TCP_ALPN } from "../../lib/protocol.ts";
import type { QuicConnection, QuicError, QuicServer } from "../../lib/transport/mod.ts";
import { tcpEngine, tcpUnsupported } from "../../lib/transport/tcp/mod.ts";
import type { DevCertPaths } from "../../scripts/dev-certs.ts";
import { scratchCerts } from "../harness.ts";
import { until } from "../wait.ts";
import { clientTls, serverTls } from "./conformance.ts";

describe("TCP transport server", { skip: tcpUnsupported }, () => {
  let certs: DevCertPaths;
  const servers: QuicServer[] = [];
  before(() => {
    certs = scratchCerts();
  });
  after(() => Promise.all(servers.map((server) => server.close())));

  const listen = async (maxHandshakes?: number) => {
    const server = await tcpEngine.listen({ host: "127.0.0.1", port: 0, tls: serverTls(certs), limits: { maxHandshakes } });
    servers.push(server);
    return server;
  };
  const dial = (server: QuicServer) =>
    tcpEngine.connect({ host: "127.0.0.1", port: server.address().port, serverName: "quic-tunnel-server", tls: clientTls(certs) });

  test("agents that finished their handshake no longer count toward the handshake limit", async () => {
    const server = await listen(2);
    const agents: QuicConnection[] = [];
    for (let i = 0; i < 4; i++) agents.push(await dial(server));
    assert.equal(server.stats().handshakesInProgress, 0);
    assert.deepEqual(server.stats().refused, {});
    for (const agent of agents) agent.close();
  });

  test("close() says goodbye to connected agents and ends one that never sent its SETTINGS", async () => {
    const server = await listen();
    const agent = await dial(server);
    const agentClosed = new Promise<QuicError | undefined>((resolve) => agent.once("close", resolve));
    const { ca, cert, key } = clientTls(certs);
    const mute = tls.connect({
      host: "127.0.0.1",
      port: server.address().port,
      servername: "quic-tunnel-server",
      ca: Buffer.from(ca),
      cert: Buffer.from(cert),
      key: Buffer.from(key),
      ALPNProtocols: [TCP_ALPN],
    });
    mute.on("error", () => {});
    mute.resume();
    const muteClosed = new Promise<void>((resolve) => mute.once("close", () => resolve()));
    await new Promise<void>((resolve) => mute.once("secureConnect", () => resolve()));
    await until(() => server.stats().handshakesInProgress === 0, "the mute agent's handshake to finish");
    const started = Date.now();
    await server.close();
    await muteClosed;
    assert.ok(Date.now() - started < 3_000, `close() took ${Date.now() - started} ms`);
    const reason = await agentClosed;
    assert.equal(reason, undefined, `the connected agent saw ${reason?.message} instead of a clean GOAWAY`);
  });
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { AGENT_FLAGS, retryWarnings, transportWarnings } from "../../lib/ops/cli.ts";
import { FlagError, parseFlags } from "../../lib/ops/flags.ts";
import type { QuicEngine, TransportCaveat, TransportOptions } from "../../lib/transport/mod.ts";
import { udpBufferShortfall } from "../../lib/transport/mod.ts";

/** An engine that cannot cap UDP payloads, as node-quic cannot; its other parts are never called. */
function engineWithCaveat(): QuicEngine & { asked: TransportOptions[] } {
  const asked: TransportOptions[] = [];
  const unused = () => Promise.reject(new Error("not for this test"));
  return {
    name: "node-quic",
    asked,
    transportCaveats(transport: TransportOptions): TransportCaveat[] {
      asked.push(transport);
      return [{ option: "maxUdpPayload", reason: `cannot cap payloads at ${transport.maxUdpPayload} bytes` }];
    },
    connect: unused,
    listen: unused,
    peekCertificate: unused,
  };
}

const agentFlags = (argv: string[]) => {
  const flags = parseFlags(["--cert-file", "a", "--cert-key", "b", "--ca-file", "c", ...argv], AGENT_FLAGS);
  assert.ok(typeof flags === "object");
  return flags;
};
/** The kernel's own warning, which comes first wherever the caps are low. */
const hostWarnings = () => (udpBufferShortfall() ? 1 : 0);

test("a transport flag the user set and the engine cannot honour is refused, naming the flag and why", () => {
  assert.throws(
    () => transportWarnings(engineWithCaveat(), agentFlags(["--max-udp-payload", "1232"])),
    (err: Error) => err instanceof FlagError && err.message === "--max-udp-payload: cannot cap payloads at 1232 bytes",
  );
});

test("a flag left at its default that the engine cannot honour is a warning that says so", () => {
  const engine = engineWithCaveat();
  const warnings = transportWarnings(engine, agentFlags([]));
  assert.equal(warnings.length, hostWarnings() + 1);
  assert.equal(warnings.at(-1), "cannot cap payloads at 1232 bytes (--max-udp-payload is at its default)");
  assert.equal(engine.asked[0].maxUdpPayload, 1232, "the engine is asked about the options with defaults filled in");
});

test("an engine that honours everything adds no warning", () => {
  const engine = { ...engineWithCaveat(), transportCaveats: () => [] };
  assert.equal(transportWarnings(engine, agentFlags(["--max-udp-payload", "1452"])).length, hostWarnings());
});

test("--quic-retry on an engine that cannot send Retry: refused when given, a warning at its default, silent when off", () => {
  const engine = { ...engineWithCaveat(), retryCaveat: "cannot send Retry" };
  const flags = (value: boolean, given: string[]) => ({ "quic-retry": value, given: new Set(given) });
  assert.throws(
    () => retryWarnings(engine, flags(true, ["quic-retry"])),
    (err: Error) => err instanceof FlagError && err.message === "--quic-retry: cannot send Retry",
  );
  assert.deepEqual(retryWarnings(engine, flags(true, [])), [
    "cannot send Retry (--quic-retry is at its default; --quic-retry=false turns this warning off)",
  ]);
  assert.deepEqual(retryWarnings(engine, flags(false, ["quic-retry"])), []);
  assert.deepEqual(retryWarnings(engineWithCaveat(), flags(true, ["quic-retry"])), [], "an engine that sends Retry takes the flag");
});

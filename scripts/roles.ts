/**
 * Running the role scripts from the project's own tooling (npm start, the benchmark, the tests):
 * the project root, the command that runs a script on a runtime, and the certificate flags of each
 * role. Tests import this; it imports nothing of the tests.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { DevCertPaths } from "../lib/dev-certs.ts";

/** The project root. */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

declare const Deno: unknown;
declare const Bun: unknown;

/** A JavaScript runtime that can run the role scripts. */
export type Runtime = { kind: "bun" | "node" | "deno"; path: string };

/** The runtime running this code. */
export function currentRuntime(): Runtime {
  return { kind: typeof Deno !== "undefined" ? "deno" : typeof Bun !== "undefined" ? "bun" : "node", path: process.execPath };
}

/** The command that runs a TypeScript file of the project with `runtime` (default: the one running this code). */
export function runtimeCommand(script: string, runtime: Runtime = currentRuntime()): [string, string[]] {
  const path = join(ROOT, script);
  if (runtime.kind === "deno") return [runtime.path, ["run", "-A", path]];
  if (runtime.kind === "bun") return [runtime.path, ["run", path]];
  return [runtime.path, [path]];
}

/** The certificate flags of the server, for `certs` (paths as the process sees them). */
export function serverTlsArgs(certs: Pick<DevCertPaths, "ca" | "serverCert" | "serverKey">): string[] {
  return ["--cert-file", certs.serverCert, "--cert-key", certs.serverKey, "--client-ca-file", certs.ca];
}

/** The flags of an agent dialing `server` (host:port) with `certs`. */
export function agentArgs(server: string, certs: Pick<DevCertPaths, "ca" | "clientCert" | "clientKey">): string[] {
  return ["--server", server, "--ca-file", certs.ca, "--cert-file", certs.clientCert, "--cert-key", certs.clientKey];
}

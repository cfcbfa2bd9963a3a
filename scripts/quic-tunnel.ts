/**
 * quic-tunnel: the multi-call entry of the standalone binary (`npm run build`). It runs the role
 * named by the name it was invoked as (quic-server, quic-agent, quic-agent-tcp: the symlinks beside
 * it), else the role given as first argument, which the role then does not see:
 *
 *   quic-tunnel server --cert-file tls.crt ...   same as   quic-server --cert-file tls.crt ...
 *
 * The role scripts parse process.argv when they are imported, so each is imported only after argv
 * is adjusted; the specifiers are literal so that `bun build` bundles all three.
 *
 * @module
 */
import { basename } from "node:path";
import pkg from "../package.json" with { type: "json" };

/** Each role: the name its symlink has, and its script. */
const ROLES = {
  server: { name: "quic-server", load: () => import("../server.ts") },
  agent: { name: "quic-agent", load: () => import("../agent.ts") },
  "agent-tcp": { name: "quic-agent-tcp", load: () => import("../agent-tcp.ts") },
} as const;

type Role = keyof typeof ROLES;

const USAGE = `quic-tunnel ${pkg.version}: reverse HTTP CONNECT tunnel over QUIC.

Usage: quic-tunnel <role> [flags]   (or run it as quic-server, quic-agent, quic-agent-tcp)

Roles:
  server      quic-server: CONNECT clients in on TCP, agents in on QUIC (mutual TLS).
  agent       quic-agent: dials the server and serves each tunnel as an HTTP CONNECT proxy.
  agent-tcp   quic-agent-tcp: dials the server and pipes each tunnel to one --upstream.

Run 'quic-tunnel <role> --help' for the role's flags.
`;

/**
 * The role to run: by the invoked name (process.argv0 keeps a symlink's name in a compiled Bun
 * binary, where argv[0] is always "bun"), else by the first argument, which is then removed.
 */
function pickRole(): Role {
  const invokedAs = basename(process.argv0);
  const named = (Object.keys(ROLES) as Role[]).find((role) => ROLES[role].name === invokedAs);
  if (named) return named;
  const first = process.argv[2];
  if (first !== undefined && Object.hasOwn(ROLES, first)) {
    process.argv.splice(2, 1);
    return first as Role;
  }
  if (first === "--version") {
    process.stdout.write(`quic-tunnel ${pkg.version}\n`);
    process.exit(0);
  }
  if (first === "--help" || first === "-h") {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  process.stderr.write(
    first === undefined ? USAGE : `quic-tunnel: unknown role ${JSON.stringify(first)}\nRun 'quic-tunnel --help' for the roles.\n`,
  );
  process.exit(2);
}

await ROLES[pickRole()].load();

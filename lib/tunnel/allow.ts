/**
 * The agent's target allow-list (`--allow`, repeatable). A rule is `HOST[:PORTS]`:
 * HOST is `*`, a name (`kubelet.local`), a wildcard name (`*.svc.cluster.local`), an IP, or a CIDR
 * (`10.0.0.0/8`, `[fd00::/8]`); PORTS is `*` (the default), a port, a list or ranges (`80,443,8000-8999`).
 *
 * Names are matched as the client wrote them. IP and CIDR rules are matched against the address
 * the target is dialed at (lib/tunnel/address.ts), in that address's own family: an IPv6 rule never
 * lets an IPv4 host through, however the client spells it. The agent dials exactly the address that
 * was checked, so DNS rebinding cannot slip past a CIDR rule either.
 *
 * @module
 */
import type ipaddr from "ipaddr.js";
import type { HostPort } from "../hostport.ts";
import { type DialAddress, dialAddress, type Resolve, resolveTarget } from "./address.ts";

type HostMatcher = { kind: "any" } | { kind: "name"; pattern: RegExp } | { kind: "cidr"; range: [ipaddr.IPv4 | ipaddr.IPv6, number] };

/** One parsed `--allow` rule. */
export interface AllowRule {
  text: string;
  host: HostMatcher;
  /** Inclusive port ranges; empty means any port. */
  ports: Array<[number, number]>;
}

function parsePorts(text: string, rule: string): Array<[number, number]> {
  if (text === "" || text === "*") return [];
  return text.split(",").map((part) => {
    const match = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part);
    const low = Number(match?.[1]);
    const high = Number(match?.[2] ?? match?.[1]);
    if (!match || low < 1 || high > 65535 || low > high) throw new Error(`--allow ${rule}: bad port or range ${JSON.stringify(part)}`);
    return [low, high];
  });
}

/** Parses an IP or CIDR of a rule, in the family it is dialed in (an IPv4-mapped rule is IPv4). */
function parseRange(text: string): [ipaddr.IPv4 | ipaddr.IPv6, number] | undefined {
  const [addressText, bitsText] = text.split("/");
  const address = dialAddress(addressText);
  if (address === undefined) return undefined;
  const max = address.family === 4 ? 32 : 128;
  const mapped = address.family === 4 && addressText.includes(":");
  const bits = bitsText === undefined ? max : Number(bitsText) - (mapped ? 96 : 0);
  if (!/^\d*$/.test(bitsText ?? "") || !Number.isInteger(bits) || bits < 0 || bits > max) return undefined;
  return [address.parsed, bits];
}

/** Parses one `--allow` value; throws an Error naming the rule when it is malformed. */
export function parseAllowRule(text: string): AllowRule {
  let hostText: string;
  let portText = "";
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end < 0 || (end + 1 < text.length && text[end + 1] !== ":")) throw new Error(`--allow ${text}: unbalanced brackets`);
    hostText = text.slice(1, end);
    portText = text.slice(end + 2);
  } else {
    const colon = text.lastIndexOf(":");
    hostText = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? "" : text.slice(colon + 1);
  }
  const ports = parsePorts(portText, text);
  if (hostText === "*") return { text, host: { kind: "any" }, ports };
  if (/^[0-9a-f:.%]+(\/\d+)?$/i.test(hostText) && (hostText.includes(":") || /^[0-9./]+$/.test(hostText))) {
    const range = parseRange(hostText);
    if (range === undefined) throw new Error(`--allow ${text}: bad IP address or prefix length`);
    return { text, host: { kind: "cidr", range }, ports };
  }
  if (!/^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$/.test(hostText)) {
    throw new Error(`--allow ${text}: expected *, a host name, *.domain, an IP or a CIDR`);
  }
  const escaped = hostText
    .toLowerCase()
    .replace(/\./g, "\\.")
    .replace(/^\*\\\./, "(?:[^.]+\\.)+");
  return { text, host: { kind: "name", pattern: new RegExp(`^${escaped}\\.?$`) }, ports };
}

function portAllowed(rule: AllowRule, port: number): boolean {
  return rule.ports.length === 0 || rule.ports.some(([low, high]) => port >= low && port <= high);
}

/** True when `address` lies in the rule's range, compared in the address's own family. */
function inRange(rule: AllowRule, address: DialAddress): boolean {
  if (rule.host.kind !== "cidr") return false;
  const [network, bits] = rule.host.range;
  return network.kind() === address.parsed.kind() && address.parsed.match(network, bits);
}

/** The verdict on one CONNECT target: the address to dial, or why not. */
export type Verdict = { allowed: true; address: DialAddress } | { allowed: false; reason: string };

/** A set of rules; a target is allowed when any rule allows it. No rules means allow all. */
export class AllowList {
  readonly rules: AllowRule[];
  readonly #resolve: Resolve | undefined;

  constructor(rules: string[], options: { resolve?: Resolve } = {}) {
    this.rules = rules.map(parseAllowRule);
    this.#resolve = options.resolve;
  }

  /** True when no rule restricts anything (the reference's open-proxy behaviour). */
  get allowsAll(): boolean {
    return this.rules.length === 0;
  }

  /**
   * Decides on `target` and says which address to dial. The target is resolved here, once, so the
   * address checked is the address dialed. Rejects only when resolution fails.
   */
  async check(target: HostPort): Promise<Verdict> {
    const denied = (address?: DialAddress): Verdict => ({
      allowed: false,
      reason: `target ${target.host}:${target.port}${address ? ` (${address.ip})` : ""} is not allowed by the agent's --allow rules`,
    });
    const candidates = this.rules.filter((rule) => portAllowed(rule, target.port));
    const isName = dialAddress(target.host) === undefined;
    const name = target.host.toLowerCase();
    const byName =
      this.allowsAll ||
      candidates.some((rule) => rule.host.kind === "any" || (isName && rule.host.kind === "name" && rule.host.pattern.test(name)));
    // A target no rule can allow is refused without asking DNS about it.
    if (!byName && !candidates.some((rule) => rule.host.kind === "cidr")) return denied();
    const addresses = await resolveTarget(target.host, this.#resolve);
    if (byName) return { allowed: true, address: addresses[0] };
    const address = addresses.find((candidate) => candidates.some((rule) => inRange(rule, candidate)));
    return address ? { allowed: true, address } : denied(addresses[0]);
  }
}

/**
 * The agent's target allow-list (`--allow`, repeatable). A rule is `HOST[:PORTS]`:
 * HOST is `*`, a name (`kubelet.local`), a wildcard name (`*.svc.cluster.local`), an IP, or a CIDR
 * (`10.0.0.0/8`, `[fd00::/8]`); PORTS is `*` (the default), a port, a list or ranges (`80,443,8000-8999`).
 * Names are matched as written; CIDR rules are matched against the address a name resolves to, and the
 * agent dials exactly that checked address, so DNS rebinding cannot slip past a CIDR rule.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { HostPort } from "../hostport.ts";

type HostMatcher = { kind: "any" } | { kind: "name"; pattern: RegExp } | { kind: "cidr"; family: 4 | 6; network: bigint; bits: number };

/** One parsed `--allow` rule. */
export interface AllowRule {
  text: string;
  host: HostMatcher;
  /** Inclusive port ranges; empty means any port. */
  ports: Array<[number, number]>;
}

/** Parses an IPv4 or IPv6 literal to a number, or undefined. */
function addressValue(address: string): { family: 4 | 6; value: bigint } | undefined {
  const family = isIP(address);
  if (family === 4) {
    return { family: 4, value: address.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n) };
  }
  if (family !== 6) return undefined;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return addressValue(mapped[1]);
  let [head, tail = ""] = address.split("%")[0].split("::");
  if (!address.includes("::")) tail = "";
  const parse = (text: string) => (text === "" ? [] : text.split(":").map((part) => BigInt(Number.parseInt(part, 16))));
  const left = parse(head);
  const right = parse(tail);
  const groups = [...left, ...Array(8 - left.length - right.length).fill(0n), ...right];
  return { family: 6, value: groups.reduce((acc, group) => (acc << 16n) | group, 0n) };
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
  const [addressText, bitsText] = hostText.split("/");
  const address = addressValue(addressText);
  if (address) {
    const max = address.family === 4 ? 32 : 128;
    const bits = bitsText === undefined ? max : Number(bitsText);
    if (!Number.isInteger(bits) || bits < 0 || bits > max) throw new Error(`--allow ${text}: bad prefix length`);
    const mask = bits === 0 ? 0n : ((1n << BigInt(bits)) - 1n) << BigInt(max - bits);
    return { text, host: { kind: "cidr", family: address.family, network: address.value & mask, bits }, ports };
  }
  if (bitsText !== undefined || !/^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$/.test(hostText)) {
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

function addressAllowed(rule: AllowRule, address: string): boolean {
  if (rule.host.kind === "any") return true;
  if (rule.host.kind !== "cidr") return false;
  const value = addressValue(address);
  if (!value || value.family !== rule.host.family) return false;
  const max = value.family === 4 ? 32 : 128;
  const mask = rule.host.bits === 0 ? 0n : ((1n << BigInt(rule.host.bits)) - 1n) << BigInt(max - rule.host.bits);
  return (value.value & mask) === rule.host.network;
}

/** The verdict on one CONNECT target: the address to dial, or why not. */
export type Verdict = { allowed: true; address: string } | { allowed: false; reason: string };

/** A set of rules; a target is allowed when any rule allows it. No rules means allow all. */
export class AllowList {
  readonly rules: AllowRule[];
  readonly #resolve: (host: string) => Promise<string[]>;

  constructor(rules: string[], options: { resolve?: (host: string) => Promise<string[]> } = {}) {
    this.rules = rules.map(parseAllowRule);
    this.#resolve = options.resolve ?? (async (host) => (await lookup(host, { all: true })).map((entry) => entry.address));
  }

  /** True when no rule restricts anything (the reference's open-proxy behaviour). */
  get allowsAll(): boolean {
    return this.rules.length === 0;
  }

  /**
   * Decides on `target` and resolves the address to dial. Names are resolved here (once), so the
   * address checked against CIDR rules is the address dialed. Rejects only when resolution fails.
   */
  async check(target: HostPort): Promise<Verdict> {
    const denied = { allowed: false as const, reason: `target ${target.host}:${target.port} is not allowed by the agent's --allow rules` };
    if (this.allowsAll) return { allowed: true, address: target.host };
    const candidates = this.rules.filter((rule) => portAllowed(rule, target.port));
    if (candidates.length === 0) return denied;
    if (isIP(target.host))
      return candidates.some((rule) => addressAllowed(rule, target.host)) ? { allowed: true, address: target.host } : denied;
    const name = target.host.toLowerCase();
    const byName = candidates.some((rule) => rule.host.kind === "any" || (rule.host.kind === "name" && rule.host.pattern.test(name)));
    if (!byName && !candidates.some((rule) => rule.host.kind === "cidr")) return denied;
    const addresses = await this.#resolve(target.host);
    if (byName) return { allowed: true, address: addresses[0] };
    const address = addresses.find((candidate) => candidates.some((rule) => addressAllowed(rule, candidate)));
    return address ? { allowed: true, address } : denied;
  }
}

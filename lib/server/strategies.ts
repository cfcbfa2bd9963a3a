/**
 * How the server picks the agent for a CONNECT (`--proxy-strategies`, Konnectivity's names), in
 * order until one finds a connected agent: `destHost` an agent that announced the target's host
 * (its name, its IP, or a CIDR holding it), `defaultRoute` an agent that announced
 * `default-route=true`, `default` any agent. Among those it picks, round-robin.
 *
 * @module
 */
import { type AgentIdentifiers, announces, type Destination } from "../identifiers.ts";

/** One strategy's name. */
export type Strategy = "destHost" | "defaultRoute" | "default";

/** The strategies, in the spelling of the flag. */
export const STRATEGIES: readonly Strategy[] = ["destHost", "defaultRoute", "default"];

/** Parses `--proxy-strategies` (comma-separated, ordered); throws naming what it cannot read. */
export function parseStrategies(text: string): Strategy[] {
  const strategies = text.split(",").map((name) => name.trim());
  for (const name of strategies) {
    if (!STRATEGIES.includes(name as Strategy)) {
      throw new Error(`--proxy-strategies: unknown strategy ${JSON.stringify(name)} (use ${STRATEGIES.join(", ")})`);
    }
  }
  if (new Set(strategies).size !== strategies.length) throw new Error("--proxy-strategies: a strategy is named twice");
  return strategies as Strategy[];
}

/** Whether `strategy` lets an agent with `identifiers` carry a CONNECT to `target` (undefined: no head, passthrough). */
export function allows(strategy: Strategy, identifiers: AgentIdentifiers, target: Destination | undefined): boolean {
  if (strategy === "default") return true;
  if (strategy === "defaultRoute") return identifiers.defaultRoute;
  return target !== undefined && announces(identifiers, target);
}

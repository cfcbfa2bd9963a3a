import assert from "node:assert/strict";
import { test } from "node:test";
import { destination, NO_IDENTIFIERS, parseIdentifiers } from "../../lib/identifiers.ts";
import { allows, parseStrategies } from "../../lib/server/strategies.ts";

test("--proxy-strategies: Konnectivity's names in order; unknown or repeated ones are refused", () => {
  assert.deepEqual(parseStrategies("destHost,defaultRoute,default"), ["destHost", "defaultRoute", "default"]);
  assert.deepEqual(parseStrategies("default"), ["default"]);
  assert.throws(() => parseStrategies("desthost"), /unknown strategy "desthost"/);
  assert.throws(() => parseStrategies("default,default"), /named twice/);
});

test("each strategy allows the agents it names", () => {
  const node3 = parseIdentifiers("ipv4=10.0.3.7");
  const gateway = parseIdentifiers("default-route=true");
  assert.ok(allows("destHost", node3, destination("10.0.3.7")));
  assert.ok(!allows("destHost", node3, destination("10.0.3.8")));
  assert.ok(!allows("destHost", node3, undefined), "a passthrough client names no target");
  assert.ok(allows("defaultRoute", gateway, destination("10.0.3.7")) && !allows("defaultRoute", node3, destination("10.0.3.7")));
  assert.ok(allows("default", NO_IDENTIFIERS, undefined));
});

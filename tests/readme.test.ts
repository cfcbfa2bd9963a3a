/**
 * README.md stays true: it documents every flag each role's --help lists, and its shell commands
 * run as written after `npm install` (Bun lives in node_modules/.bin, so never a bare `bun`).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, run, runtimeCommand } from "./harness.ts";

const README = readFileSync(join(ROOT, "README.md"), "utf8");

/** The lines of the README's sh code blocks, continuation lines joined. */
function shellLines(): string[] {
  const blocks = [...README.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1]);
  return blocks.flatMap((block) => block.replace(/\\\n\s*/g, " ").split("\n")).filter((line) => line.trim() !== "");
}

for (const role of ["server.ts", "agent.ts", "agent-tcp.ts"]) {
  test(`README documents every flag of ${role} --help`, async () => {
    const [command, base] = runtimeCommand(role);
    const help = (await run(command, [...base, "--help"])).stdout.toString();
    const flags = [...help.matchAll(/^ {2}(?:-h, )?(--[a-z][a-z0-9-]*)/gm)].map((match) => match[1]);
    assert.ok(flags.length > 10, `${role} --help lists its flags`);
    const missing = flags.filter((flag) => !README.includes(`\`${flag}\``) && !README.includes(`\`-${flag.slice(2)}`));
    assert.deepEqual(missing, [], `flags of ${role} the README does not mention`);
  });
}

test("README's shell commands name no tool npm install does not provide", () => {
  const lines = shellLines();
  assert.ok(lines.length > 5);
  const bare = lines.filter((line) => /(^|[|;&]\s*)(bun|deno)\s/.test(line.trim()));
  assert.deepEqual(bare, [], "use `npx bun` / `npx deno` or an npm script");
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentPool } from "../../lib/server/agent-pool.ts";

class FakeAgent {
  opened = 0;
  readonly name: string;
  full: boolean;
  constructor(name: string, full = false) {
    this.name = name;
    this.full = full;
  }
  async openStream(): Promise<string> {
    if (this.full) throw new Error(`${this.name} is at its stream limit`);
    this.opened++;
    return `${this.name}#${this.opened}`;
  }
}

test("round-robin over agents", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  const [a, b, c] = [new FakeAgent("a"), new FakeAgent("b"), new FakeAgent("c")];
  for (const agent of [a, b, c]) pool.add(agent);
  const names: Array<string | undefined> = [];
  for (let i = 0; i < 6; i++) names.push((await pool.openStream()).stream);
  assert.deepEqual(names, ["a#1", "b#1", "c#1", "a#2", "b#2", "c#2"]);
});

test("skips an agent that cannot open a stream and reports when none can", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  const [a, b] = [new FakeAgent("a", true), new FakeAgent("b")];
  pool.add(a);
  pool.add(b);
  assert.equal((await pool.openStream()).stream, "b#1");
  b.full = true;
  const none = await pool.openStream();
  assert.equal(none.stream, undefined);
  assert.ok("errors" in none && none.errors.length === 2);
});

test("removal keeps the rotation fair and an empty pool answers nothing", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  assert.equal((await pool.openStream()).stream, undefined);
  const [a, b, c] = [new FakeAgent("a"), new FakeAgent("b"), new FakeAgent("c")];
  for (const agent of [a, b, c]) pool.add(agent);
  await pool.openStream();
  await pool.openStream();
  pool.remove(b);
  pool.remove(new FakeAgent("unknown"));
  assert.equal(pool.size, 2);
  assert.deepEqual([(await pool.openStream()).stream, (await pool.openStream()).stream], ["c#1", "a#2"]);
});

test("when every agent is full, a stream waits for room and gets it once an agent frees one", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  const agent = new FakeAgent("a", true);
  pool.add(agent);
  const waiting = pool.openStream({ waitMs: 5_000 });
  agent.full = false;
  pool.roomMade();
  assert.equal((await waiting).stream, "a#1");
});

test("a stream waits no longer than asked, then reports every agent's refusal", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  pool.add(new FakeAgent("a", true));
  const started = performance.now();
  const none = await pool.openStream({ waitMs: 100 });
  assert.equal(none.stream, undefined);
  assert.ok(performance.now() - started >= 95);
  assert.ok("errors" in none && /stream limit/.test(none.errors[0].message));
});

test("a penalized agent takes streams only when no other agent can, until its penalty ends", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  const [a, b] = [new FakeAgent("a"), new FakeAgent("b")];
  pool.add(a);
  pool.add(b);
  pool.penalize(a, 60_000);
  const names: Array<string | undefined> = [];
  for (let i = 0; i < 4; i++) names.push((await pool.openStream()).stream);
  assert.deepEqual(names, ["b#1", "b#2", "b#3", "b#4"]);
  b.full = true;
  assert.equal((await pool.openStream()).stream, "a#1", "the penalized agent still serves when it is the only one with room");
  b.full = false;
  pool.penalize(b, 0);
  pool.penalize(a, 0);
  const after: Array<string | undefined> = [];
  for (let i = 0; i < 2; i++) after.push((await pool.openStream()).stream);
  assert.deepEqual(after.sort(), ["a#2", "b#5"], "once the penalty is over, round-robin again");
});

test("only the agents a strategy accepts are tried, round-robin among them, and none accepted ends at once", async () => {
  const pool = new AgentPool<FakeAgent, string>();
  const [a, b, c] = [new FakeAgent("a"), new FakeAgent("b"), new FakeAgent("c")];
  for (const agent of [a, b, c]) pool.add(agent);
  const accept = (agent: FakeAgent) => agent !== b;
  const names = new Set<string | undefined>();
  for (let i = 0; i < 6; i++) names.add((await pool.openStream({ accept })).stream?.split("#")[0]);
  assert.deepEqual([...names].sort(), ["a", "c"]);
  const started = performance.now();
  const none = await pool.openStream({ accept: () => false, waitMs: 5_000 });
  assert.equal(none.stream, undefined);
  assert.ok(performance.now() - started < 1_000, "no agent accepted: no waiting for room");
});

/**
 * The control streams between our own agents and server, on top of the reference's protocol (which
 * has none): a stream the agent opens carries one line.
 *
 * - `AGENT connect` or `AGENT passthrough`, as the agent connects: the server learns what its
 *   clients must speak (HTTP CONNECT, or anything for agent-tcp) and answers on the same stream
 *   with `LISTENERS host:port ...`, its client listeners, so the agent can refuse a CONNECT back
 *   into the server itself (508 Loop Detected), then `SERVER <id> <count>`: which of how many
 *   server replicas it is, so that the agent holds a connection to each (`--server-count`). Agents
 *   from before that line read only the first.
 * - `IDENTIFY <agent-id> <identifiers>`, as the agent connects, when it was given `--agent-id` or
 *   `--agent-identifiers`: what it can reach (lib/identifiers.ts), for `--proxy-strategies`.
 * - `FEATURES <name> ...`, as the agent connects: what it asks of the server's streams to it
 *   (`stream-opened`, lib/protocol.ts). A server that knows no such line ignores it.
 * - `GOAWAY`, before an agent shuts down: route no new tunnels to it.
 *
 * The reference's server never accepts streams from agents, so our agents work with it unchanged
 * (without loop refusal); the reference's agents never open one, and our server treats them as
 * CONNECT agents unless told `--passthrough`.
 *
 * @module
 */
import type { Duplex } from "node:stream";
import { formatHostPort, type HostPort, parseHostPort } from "./hostport.ts";
import { type AgentIdentifiers, formatIdentifiers, ID_PATTERN, parseIdentifiers } from "./identifiers.ts";
import { GOAWAY } from "./protocol.ts";
import type { QuicConnection } from "./transport/mod.ts";

/** What clients of an agent speak. */
export type AgentKind = "connect" | "passthrough";

/** A control line read from an agent's stream. */
export type ControlMessage =
  | { type: "hello"; kind: AgentKind }
  | { type: "identify"; id: string; identifiers: AgentIdentifiers }
  | { type: "features"; features: string[] }
  | { type: "goaway" };

/** Who an agent is and what it can reach (`--agent-id`, `--agent-identifiers`). */
export interface AgentIdentity {
  id: string;
  identifiers: AgentIdentifiers;
}

/**
 * Longest control line read. A server on a wildcard listener names every address of its host
 * (lib/server/frontends.ts), ~50 bytes each: room for a thousand of them, since a line cut short
 * leaves the agent without any loop refusal.
 */
const MAX_LINE = 64 * 1024;
/** Room for the answer's `SERVER <id> <count>` line beside the listeners. */
const MAX_SERVER_LINE = 128;

/** One line read from a control stream: none when it ended, failed or ran long. */
interface LineRead {
  line?: string;
  /** The peer ended or reset the stream without a line. */
  abandoned?: boolean;
}

/** Reads one line (without its newline) from `stream`. */
function readLine(stream: Duplex, timeoutMs: number): Promise<LineRead> {
  return new Promise((resolve) => {
    let text = "";
    const finish = (result: LineRead) => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      const newline = text.indexOf("\n");
      if (newline >= 0) finish({ line: text.slice(0, newline) });
      else if (text.length > MAX_LINE) finish({});
    };
    const onEnd = () => finish({ abandoned: true });
    const timer = setTimeout(() => finish({}), timeoutMs);
    stream.on("error", () => finish({ abandoned: true }));
    stream.on("data", onData);
    stream.once("end", onEnd);
  });
}

/** Lines read from a control stream's answer. */
interface AnswerRead {
  lines: string[];
  abandoned: boolean;
  /** The answer is all there is: the stream ended, failed or ran long. */
  complete: boolean;
}

/**
 * Reads what the server answers on a control stream, up to its end (it ends the stream after its
 * answer): the lines, none when it ended, failed or ran long. `early` settles with what came
 * within `timeoutMs`, `final` when the answer is complete or `lateMs` passed.
 */
function readAnswer(
  stream: Duplex,
  options: { timeoutMs: number; lateMs: number },
): { early: Promise<AnswerRead>; final: Promise<AnswerRead> } {
  let text = "";
  // Whole lines only: a timeout may cut the last one short.
  const read = (abandoned: boolean, complete: boolean): AnswerRead => {
    const whole = text.slice(0, Math.max(0, text.lastIndexOf("\n")));
    return { lines: whole ? whole.split("\n") : [], abandoned: abandoned && !whole, complete };
  };
  const final = new Promise<AnswerRead>((resolve) => {
    const finish = (abandoned: boolean) => {
      clearTimeout(timer);
      stream.off("data", onData);
      resolve(read(abandoned, true));
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (text.length > MAX_LINE + MAX_SERVER_LINE) {
        text = "";
        finish(false);
      }
    };
    const timer = setTimeout(() => finish(false), options.lateMs);
    timer.unref?.();
    stream.on("error", () => finish(true));
    stream.on("data", onData);
    stream.once("end", () => finish(true));
  });
  let early: ReturnType<typeof setTimeout> | undefined;
  return {
    early: Promise.race([
      final,
      new Promise<AnswerRead>((resolve) => {
        early = setTimeout(() => resolve(read(false, false)), options.timeoutMs);
      }),
    ]).finally(() => clearTimeout(early)),
    final,
  };
}

/** Which server replica answered, of how many (`--server-id`, `--server-count`). */
export interface ServerIdentity {
  id: string;
  count: number;
}

/** Parses the first line of an agent's control stream; undefined for anything else. */
export function parseControlLine(line: string | undefined): ControlMessage | undefined {
  if (`${line}\n` === GOAWAY) return { type: "goaway" };
  const identify = /^IDENTIFY (\S+) ?(\S*)$/.exec(line ?? "");
  if (identify && ID_PATTERN.test(identify[1])) {
    try {
      return { type: "identify", id: identify[1], identifiers: parseIdentifiers(identify[2]) };
    } catch {
      return undefined;
    }
  }
  const features = /^FEATURES ([a-z-]{1,32}(?: [a-z-]{1,32}){0,15})$/.exec(line ?? "");
  if (features) return { type: "features", features: features[1].split(" ") };
  const hello = /^AGENT (connect|passthrough)$/.exec(line ?? "");
  return hello ? { type: "hello", kind: hello[1] as AgentKind } : undefined;
}

/**
 * Serves a stream an agent opened: reads its line, answers a hello with the server's listeners
 * and identity, and ends the stream. Resolves with what the agent said, or undefined.
 */
export async function serveControlStream(
  stream: Duplex,
  answer: { listeners: () => readonly HostPort[]; identity: ServerIdentity },
): Promise<ControlMessage | undefined> {
  const message = parseControlLine((await readLine(stream, 5_000)).line);
  if (message?.type === "hello") {
    const { id, count } = answer.identity;
    stream.end(`LISTENERS ${answer.listeners().map(formatHostPort).join(" ")}\nSERVER ${id} ${count}\n`);
  } else stream.destroy();
  return message;
}

/** What the server answered an agent's hello. */
export interface Announcement {
  /** The server's client listeners; undefined when it does not answer (the reference's server never does). */
  listeners?: HostPort[];
  /** Which replica the server is, when it says (ours since `--server-count`). */
  server?: ServerIdentity;
  /**
   * The server ended, reset or refused the stream without a word: it is refusing this agent, or
   * going away (the agent then waits for the close before it calls itself connected).
   */
  abandoned: boolean;
  /**
   * When the answer was not complete within the timeout (a slow or lossy path; the reference's
   * server never answers): the whole answer, should it come later.
   */
  late?: Promise<Announcement>;
}

/** How long a hello's answer is still read after the agent went on without it. */
const LATE_ANSWER_MS = 30_000;

/** What `lines` of a hello's answer say. */
function announcement({ lines, abandoned }: AnswerRead): Announcement {
  const listed = /^LISTENERS ?(.*)$/.exec(lines[0] ?? "");
  if (!listed) return { abandoned };
  const listeners = listed[1]
    .split(" ")
    .filter(Boolean)
    .map(parseHostPort)
    .filter((address) => address !== undefined);
  // A server from before --server-count sends no second line.
  const identity = /^SERVER (\S+) (\d+)$/.exec(lines[1] ?? "");
  const count = Number(identity?.[2]);
  const server = identity && ID_PATTERN.test(identity[1]) && count >= 1 ? { id: identity[1], count } : undefined;
  return { listeners, server, abandoned: false };
}

/**
 * Tells the server on `connection` what kind of agent this is, and resolves with its answer, or
 * what of it came within `timeoutMs` (and the rest as {@link Announcement.late}).
 */
async function announceAgent(connection: QuicConnection, options: { kind: AgentKind; timeoutMs: number }): Promise<Announcement> {
  let stream: Duplex;
  try {
    stream = await connection.openStream();
  } catch {
    // A server that cannot take the stream: it is closing, or it is the reference, which takes none.
    return { abandoned: true };
  }
  stream.on("error", () => {});
  stream.write(`AGENT ${options.kind}\n`);
  const { early, final } = readAnswer(stream, { timeoutMs: options.timeoutMs, lateMs: LATE_ANSWER_MS });
  void final.then(() => stream.destroy());
  const first = await early;
  const answer = announcement(first);
  return first.complete || answer.server ? answer : { ...answer, late: final.then(announcement) };
}

/**
 * Sends one control `line` on a stream of its own; resolves once the server has taken it (our
 * server reads it and ends the stream). One that never does (the reference's, which takes no
 * streams from agents) has the stream ended after `timeoutMs`, so that it does not count as a
 * tunnel for ever.
 */
async function sendLine(connection: QuicConnection, line: string, options: { timeoutMs: number }): Promise<void> {
  let stream: Duplex;
  try {
    stream = await connection.openStream();
  } catch {
    return; // a server closing
  }
  stream.on("error", () => {});
  stream.end(`${line}\n`);
  stream.resume();
  const timer = setTimeout(() => stream.destroy(), options.timeoutMs);
  timer.unref?.();
  await new Promise((resolve) => stream.once("close", resolve));
  clearTimeout(timer);
}

/** How long the server may take to read the agent's identity or features before their stream is ended. */
const TAKE_TIMEOUT_MS = 5_000;

/**
 * Introduces this agent on a new connection: who it is (when it has an identity) and what it asks
 * of the server's streams (`features`), then what kind of agent it is (the hello), resolving with
 * the server's answer. The server lets an agent take tunnels on its hello, so the hello waits
 * until the server has taken the lines before it (or `timeoutMs` passed): a tunnel routed by
 * `--proxy-strategies` must find what the agent reaches, however the streams were delayed.
 */
export async function introduceAgent(
  connection: QuicConnection,
  options: { kind: AgentKind; identity?: AgentIdentity; features?: readonly string[]; timeoutMs: number; takeTimeoutMs?: number },
): Promise<Announcement> {
  const lines = [
    ...(options.identity ? [`IDENTIFY ${options.identity.id} ${formatIdentifiers(options.identity.identifiers)}`] : []),
    ...(options.features?.length ? [`FEATURES ${options.features.join(" ")}`] : []),
  ];
  if (lines.length > 0) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const taken = lines.map((line) => sendLine(connection, line, { timeoutMs: options.takeTimeoutMs ?? TAKE_TIMEOUT_MS }));
    await Promise.race([
      Promise.all(taken),
      new Promise((resolve) => {
        timer = setTimeout(resolve, options.timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }
  return announceAgent(connection, options);
}

/** Asks the server on `connection` to route no new tunnels here. */
export async function sendGoAway(connection: QuicConnection): Promise<void> {
  (await connection.openStream()).on("error", () => {}).end(GOAWAY);
}

import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { HttpError } from "../../lib/tunnel/connect.ts";
import { dial } from "../../lib/tunnel/dial.ts";

test("dials with half-close allowed", async () => {
  const server = net.createServer((socket) => socket.on("error", () => {}).end("hi"));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const socket = await dial({ host: "127.0.0.1", port: (server.address() as net.AddressInfo).port }, { timeoutMs: 1000 });
  assert.equal(socket.allowHalfOpen, true);
  socket.destroy();
  server.close();
});

test("a refused dial is 502 naming the target", async () => {
  await assert.rejects(
    dial({ host: "127.0.0.1", port: 1 }, { timeoutMs: 1000 }),
    (err: Error) => err instanceof HttpError && err.status === 502 && /127\.0\.0\.1:1 failed: ECONNREFUSED/.test(err.message),
  );
});

test("a name that does not resolve is 502", async () => {
  await assert.rejects(
    dial({ host: "no-such-host.invalid", port: 80 }, { timeoutMs: 5000 }),
    (err: Error) => err instanceof HttpError && err.status === 502,
  );
});

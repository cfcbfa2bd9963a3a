import assert from "node:assert/strict";
import { test } from "node:test";
import { UDP_SOCKET_BUFFER_BYTES, udpBufferShortfall } from "../../lib/transport/socket-buffers.ts";

const limits = (values: Record<string, string>) => (path: string) => {
  if (!(path in values)) throw new Error(`ENOENT: ${path}`);
  return values[path];
};

test("Linux's default caps are reported with the sysctls that raise them", () => {
  const warning = udpBufferShortfall(limits({ "/proc/sys/net/core/rmem_max": "212992\n", "/proc/sys/net/core/wmem_max": "212992\n" }));
  assert.match(String(warning), /receive 208 KiB, send 208 KiB/);
  assert.match(String(warning), /sysctl -w net\.core\.rmem_max=4194304 net\.core\.wmem_max=4194304$/);
});

test("only the direction that is short is named", () => {
  const warning = udpBufferShortfall(
    limits({ "/proc/sys/net/core/rmem_max": "212992", "/proc/sys/net/core/wmem_max": String(UDP_SOCKET_BUFFER_BYTES) }),
  );
  assert.match(String(warning), /\(receive 208 KiB\)/);
  assert.doesNotMatch(String(warning), /wmem_max/);
});

test("caps that allow the asked size, or a system that does not say, give no warning", () => {
  const enough = String(UDP_SOCKET_BUFFER_BYTES * 2);
  assert.equal(udpBufferShortfall(limits({ "/proc/sys/net/core/rmem_max": enough, "/proc/sys/net/core/wmem_max": enough })), undefined);
  assert.equal(udpBufferShortfall(limits({})), undefined);
  assert.equal(
    udpBufferShortfall(limits({ "/proc/sys/net/core/rmem_max": "not a number", "/proc/sys/net/core/wmem_max": enough })),
    undefined,
  );
});

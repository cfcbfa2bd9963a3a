/**
 * `npm run build`: standalone executables dist/quic-server, dist/quic-agent, dist/quic-agent-tcp
 * with `bun build --compile`. The quiche addon is loaded by @matrixai/quic with a computed require()
 * that the bundler cannot follow, so a plugin swaps that loader for a static import of the linux-x64
 * addon, which the compiler then embeds. The version comes from package.json.
 *
 * @module
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../tests/harness.ts";

declare const Bun: {
  build(options: Record<string, unknown>): Promise<{ success: boolean; logs: unknown[] }>;
};

const ROLES = { "server.ts": "quic-server", "agent.ts": "quic-agent", "agent-tcp.ts": "quic-agent-tcp" };

const embedQuiche = {
  name: "embed-quiche-addon",
  setup(build: { onLoad(options: { filter: RegExp }, load: () => { contents: string; loader: string }): void }) {
    build.onLoad({ filter: /@matrixai[\\/]quic[\\/]dist[\\/]native[\\/]quiche\.js$/ }, () => ({
      contents: 'import binding from "@matrixai/quic-linux-x64/node.napi.node";\nexport default binding;\n',
      loader: "js",
    }));
  },
};

rmSync(join(ROOT, "dist"), { recursive: true, force: true });
for (const [entry, name] of Object.entries(ROLES)) {
  const result = await Bun.build({
    entrypoints: [join(ROOT, entry)],
    compile: { target: "bun-linux-x64", outfile: join(ROOT, "dist", name) },
    minify: true,
    plugins: [embedQuiche],
  });
  if (!result.success) {
    console.error(result.logs);
    process.exit(1);
  }
  console.log(`built dist/${name}`);
}

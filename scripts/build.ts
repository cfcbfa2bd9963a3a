/**
 * `npm run build`: one multi-call executable per platform, dist/<platform>/quic-tunnel (entry
 * scripts/quic-tunnel.ts), with symlinks quic-server, quic-agent, quic-agent-tcp beside it.
 *
 * - linux-x64 embeds the quiche addon: @matrixai/quic loads it with a computed require() that the
 *   bundler cannot follow, so a plugin swaps that loader for a static import of the linux-x64 addon.
 * - linux-arm64 is cross-compiled onto the aarch64 Bun runtime of the pinned version (npm package
 *   @oven/bun-linux-aarch64: installed on arm64 hosts, else fetched with `npm pack` into
 *   node_modules/.cache/), never downloaded by bun itself. No arm64 addon exists, so the loader
 *   throws there and `--quic-engine auto` falls back to node-quic.
 *
 * Both are built with bytecode (faster start-up) and without node:quic's ExperimentalWarning.
 *
 * @module
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pkg from "../package.json" with { type: "json" };

declare const Bun: {
  version: string;
  build(options: Record<string, unknown>): Promise<unknown>;
};

/**
 * The platforms built, by folder name under dist/, each with Docker's name for its CPU: the
 * Dockerfile copies from dist/$TARGETARCH, a link to the folder (its builder cannot map the names).
 */
const PLATFORMS = { "linux-x64": "amd64", "linux-arm64": "arm64" } as const;

type Platform = keyof typeof PLATFORMS;

/** The executable's name, and the role names linked to it (see scripts/quic-tunnel.ts). */
const EXECUTABLE = "quic-tunnel";
const ROLE_LINKS = ["quic-server", "quic-agent", "quic-agent-tcp"];

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const AARCH64_PACKAGE = "@oven/bun-linux-aarch64";

/** What replaces @matrixai/quic's addon loader on each platform. */
const QUICHE_LOADER: Record<Platform, string> = {
  "linux-x64": 'import binding from "@matrixai/quic-linux-x64/node.napi.node";\nexport default binding;\n',
  "linux-arm64":
    'throw new Error("the quiche engine is not in this build (linux-arm64): use --quic-engine node-quic");\nexport default undefined;\n',
};

function quicheLoader(platform: Platform) {
  return {
    name: `quiche-loader-${platform}`,
    setup(build: { onLoad(options: { filter: RegExp }, load: () => { contents: string; loader: string }): void }) {
      build.onLoad({ filter: /@matrixai[\\/]quic[\\/]dist[\\/]native[\\/]quiche\.js$/ }, () => ({
        contents: QUICHE_LOADER[platform],
        loader: "js",
      }));
    },
  };
}

/**
 * The aarch64 Bun runtime of the pinned version. npm refuses to install a package for another CPU
 * (EBADPLATFORM), so on x64 it is an optional dependency that npm skips, and `npm pack` fetches
 * it instead; the tarball must match package-lock.json's integrity.
 */
function aarch64Runtime(version: string): string {
  const installed = join(ROOT, "node_modules", AARCH64_PACKAGE);
  if (existsSync(join(installed, "bin/bun"))) {
    const found = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")).version;
    if (found !== version) throw new Error(`${installed} is ${found}, but package.json pins ${version}: run npm install`);
    return join(installed, "bin/bun");
  }
  const cache = join(ROOT, "node_modules/.cache", `bun-linux-aarch64-${version}`);
  const runtime = join(cache, "package/bin/bun");
  if (existsSync(runtime)) return runtime;
  mkdirSync(cache, { recursive: true });
  console.log(`fetching ${AARCH64_PACKAGE}@${version} with npm pack into ${cache}`);
  const [packed] = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", cache, `${AARCH64_PACKAGE}@${version}`], { cwd: cache, encoding: "utf8" }),
  );
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
  const locked = lock.packages?.[`node_modules/${AARCH64_PACKAGE}`]?.integrity;
  if (packed.integrity !== locked) {
    throw new Error(`npm pack ${AARCH64_PACKAGE}@${version}: integrity ${packed.integrity} differs from package-lock.json's ${locked}`);
  }
  execFileSync("tar", ["-xzf", join(cache, packed.filename), "-C", cache]);
  rmSync(join(cache, packed.filename));
  return runtime;
}

/** The Bun runtime each platform's executable is built on. */
function runtimes(): Record<Platform, string> {
  // The x64 runtime is the running Bun itself, and the bytecode is made by it: all must be one version.
  const version = pkg.optionalDependencies[AARCH64_PACKAGE];
  if (Bun.version !== version) {
    throw new Error(`running Bun ${Bun.version}, but package.json pins ${AARCH64_PACKAGE} ${version}: build with npm run build`);
  }
  return { "linux-x64": process.execPath, "linux-arm64": aarch64Runtime(version) };
}

// The x64 addon comes from npm's install on this host, and the x64 runtime is the running Bun.
if (process.platform !== "linux" || process.arch !== "x64") {
  throw new Error(`scripts/build.ts builds on linux-x64 only, not ${process.platform}-${process.arch}`);
}
const runtime = runtimes();
rmSync(join(ROOT, "dist"), { recursive: true, force: true });
for (const [platform, dockerArch] of Object.entries(PLATFORMS) as Array<[Platform, string]>) {
  const dir = join(ROOT, "dist", platform);
  const started = performance.now();
  await Bun.build({
    entrypoints: [join(ROOT, "scripts/quic-tunnel.ts")],
    compile: {
      target: `bun-${platform}`,
      outfile: join(dir, EXECUTABLE),
      executablePath: runtime[platform],
      // node:quic (the node-quic engine) warns that it is experimental on every start.
      execArgv: ["--disable-warning=ExperimentalWarning"],
    },
    // Bytecode takes about a quarter off start-up; it needs format esm here, as the entry and the roles await at top level.
    bytecode: true,
    format: "esm",
    minify: true,
    plugins: [quicheLoader(platform)],
  });
  for (const link of ROLE_LINKS) symlinkSync(EXECUTABLE, join(dir, link));
  symlinkSync(platform, join(ROOT, "dist", dockerArch));
  const mib = (statSync(join(dir, EXECUTABLE)).size / 2 ** 20).toFixed(1);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`built dist/${platform}/${EXECUTABLE} (${mib} MiB, ${seconds} s), links ${ROLE_LINKS.join(", ")}, dist/${dockerArch}`);
}

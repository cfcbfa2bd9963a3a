/**
 * Lays out the smallest root filesystem the compiled binaries of one platform run in: the shared
 * libraries they load (glibc; on linux-x64 also libgcc_s for the embedded QUIC addon), /etc/hosts,
 * /etc/passwd for the non-root user, and empty /tmp (Bun unpacks the addon there) and /proc. The
 * chroot tests and the scratch images use exactly this.
 *
 * The libraries are the ones the platform's dynamic loader lists for the binaries. On linux-arm64
 * that loader is Debian's cross glibc (libc6-arm64-cross) run under qemu-aarch64-static, which
 * lists paths as the arm64 system sees them; the files are read from /usr/aarch64-linux-gnu.
 *
 * Usage: bun run scripts/rootfs.ts <linux-x64|linux-arm64> <dir> <binary>...
 *
 * @module
 */
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, realpathSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** How to find a platform's libraries on this (linux-x64) host. */
interface PlatformLibraries {
  /** The command that prints the libraries a binary loads, ldd style (the binary is appended). */
  list: string[];
  /** Where the platform's files are on this host ("" where it is this host's own). */
  prefix: string;
  /** Loaded without the loader seeing it (by the embedded addon), as the platform sees it. */
  extra: string[];
}

const AARCH64 = "/usr/aarch64-linux-gnu";

/** The platforms scripts/build.ts builds. */
const PLATFORMS: Record<string, PlatformLibraries> = {
  "linux-x64": { list: ["ldd"], prefix: "", extra: ["/lib/x86_64-linux-gnu/libgcc_s.so.1"] },
  "linux-arm64": {
    list: ["qemu-aarch64-static", "-L", AARCH64, `${AARCH64}/lib/ld-linux-aarch64.so.1`, "--list"],
    prefix: AARCH64,
    extra: [],
  },
};

/** Shared objects the binaries load, as the platform sees them. */
function libraries(platform: PlatformLibraries, binaries: string[]): string[] {
  const found = new Set(platform.extra);
  for (const binary of binaries) {
    const [command, ...args] = platform.list;
    for (const line of execFileSync(command, [...args, binary], { encoding: "utf8" }).split("\n")) {
      const path = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1];
      // qemu's loader names itself by its host path: back to the path the arm64 system has.
      if (path) found.add(platform.prefix && path.startsWith(`${platform.prefix}/`) ? path.slice(platform.prefix.length) : path);
    }
  }
  return [...found];
}

/** Writes the root filesystem of `platform` for `binaries` into `dir` (binaries not included); returns the libraries. */
export function makeRootfs(platform: string, dir: string, binaries: string[]): string[] {
  const spec = PLATFORMS[platform];
  if (!spec) throw new Error(`rootfs: unknown platform ${JSON.stringify(platform)} (${Object.keys(PLATFORMS).join(", ")})`);
  const files = libraries(spec, binaries);
  for (const library of files) {
    const source = spec.prefix + library;
    if (!existsSync(source)) throw new Error(`rootfs ${platform}: ${source} not found`);
    const target = join(dir, library);
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(realpathSync(source), target);
  }
  mkdirSync(join(dir, "etc"), { recursive: true });
  writeFileSync(join(dir, "etc/hosts"), "127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
  writeFileSync(join(dir, "etc/passwd"), "root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n");
  writeFileSync(join(dir, "etc/group"), "root:x:0:\nnonroot:x:65532:\n");
  for (const empty of ["tmp", "proc"]) mkdirSync(join(dir, empty), { recursive: true });
  chmodSync(join(dir, "tmp"), 0o1777);
  return files;
}

if (import.meta.main) {
  const [platform, dir, ...binaries] = process.argv.slice(2);
  if (!platform || !dir || binaries.length === 0) {
    console.error(`usage: rootfs.ts <${Object.keys(PLATFORMS).join("|")}> <dir> <binary>...`);
    process.exit(2);
  }
  for (const file of makeRootfs(platform, dir, binaries)) console.log(file);
}

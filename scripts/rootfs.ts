/**
 * Lays out the smallest root filesystem the compiled binaries run in: the shared libraries they
 * load (glibc, libgcc_s for the embedded QUIC addon), /etc/hosts, /etc/passwd for the non-root
 * user, and empty /tmp (Bun unpacks the addon there) and /proc. The chroot test and the scratch
 * image use exactly this.
 *
 * Usage: bun run scripts/rootfs.ts <dir> <binary>...
 *
 * @module
 */
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, realpathSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

const LIBGCC = ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"];

/** Shared objects the binaries load, plus libgcc_s (needed by the embedded addon, invisible to ldd). */
function libraries(binaries: string[]): string[] {
  const found = new Set<string>();
  for (const binary of binaries) {
    for (const line of execFileSync("ldd", [binary], { encoding: "utf8" }).split("\n")) {
      const path = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1];
      if (path) found.add(path);
    }
  }
  const libgcc = LIBGCC.find((path) => existsSync(path));
  if (!libgcc) throw new Error(`libgcc_s.so.1 not found in ${LIBGCC.join(" or ")}`);
  found.add(libgcc);
  return [...found];
}

/** Writes the root filesystem for `binaries` into `dir` (binaries not included). */
export function makeRootfs(dir: string, binaries: string[]): string[] {
  const files: string[] = [];
  for (const library of libraries(binaries)) {
    const target = join(dir, library);
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(realpathSync(library), target);
    files.push(library);
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
  const [dir, ...binaries] = process.argv.slice(2);
  if (!dir || binaries.length === 0) {
    console.error("usage: rootfs.ts <dir> <binary>...");
    process.exit(2);
  }
  for (const file of makeRootfs(dir, binaries)) console.log(file);
}

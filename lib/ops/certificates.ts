/**
 * Reading certificate, key and CA files for the QUIC transport, with errors that name the flag.
 *
 * @module
 */
import { readFileSync, unwatchFile, watchFile } from "node:fs";
import type { TlsMaterial } from "../quic/mod.ts";

/** The three files of one side's mutual TLS, each with the flag that named it. */
export interface TlsFiles {
  ca: { flag: string; path: string };
  cert: { flag: string; path: string };
  key: { flag: string; path: string };
}

const CERTIFICATE = { marker: /-----BEGIN CERTIFICATE-----/, what: "certificate" };
const PRIVATE_KEY = { marker: /-----BEGIN (RSA |EC )?PRIVATE KEY-----/, what: "private key" };

function readPem(flag: string, path: string, expected: { marker: RegExp; what: string }): Uint8Array {
  if (!path) throw new Error(`--${flag} is required`);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`--${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!expected.marker.test(text)) throw new Error(`--${flag}: ${path} holds no PEM ${expected.what}`);
  return Buffer.from(text);
}

/** Loads and sanity-checks PEM files; throws an Error naming the flag and path on any problem. */
export function loadTls(files: TlsFiles): TlsMaterial {
  return {
    ca: readPem(files.ca.flag, files.ca.path, CERTIFICATE),
    cert: readPem(files.cert.flag, files.cert.path, CERTIFICATE),
    key: readPem(files.key.flag, files.key.path, PRIVATE_KEY),
  };
}

/**
 * Polls `paths` (so that renames and symlink swaps, as Kubernetes secret updates do, are seen) and,
 * when any changed, calls `onChange` with what `load` makes of them, or `onError` when that throws
 * (the caller keeps what it has). Returns a function that stops watching.
 */
export function watchFiles<T>(
  paths: string[],
  handlers: { load: () => T; onChange: (loaded: T) => void; onError: (err: Error) => void; intervalMs?: number },
): () => void {
  let pending: ReturnType<typeof setTimeout> | undefined;
  const changed = () => {
    // Files of one rotation change within moments of each other: load once they settle.
    clearTimeout(pending);
    pending = setTimeout(() => {
      try {
        handlers.onChange(handlers.load());
      } catch (err) {
        handlers.onError(err as Error);
      }
    }, 200);
  };
  for (const path of paths) watchFile(path, { interval: handlers.intervalMs ?? 1000 }, changed);
  return () => {
    clearTimeout(pending);
    for (const path of paths) unwatchFile(path, changed);
  };
}

/** Watches the three files of {@link loadTls} and reloads them together. */
export function watchTls(files: TlsFiles, handlers: { onChange: (tls: TlsMaterial) => void; onError: (err: Error) => void }): () => void {
  return watchFiles([files.ca.path, files.cert.path, files.key.path], { load: () => loadTls(files), ...handlers });
}

/**
 * Reading certificate, key and CA files for the QUIC transport, with errors that name the flag.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import type { TlsMaterial } from "./transport.ts";

/** The three files of one side's mutual TLS, each with the flag that named it. */
export interface TlsFiles {
  ca: { flag: string; path: string };
  cert: { flag: string; path: string };
  key: { flag: string; path: string };
}

function readPem(flag: string, path: string, marker: RegExp): Uint8Array {
  if (!path) throw new Error(`--${flag} is required`);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`--${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!marker.test(text)) throw new Error(`--${flag}: ${path} holds no PEM ${marker.source.replace(/\\s|[()|?]/g, " ").trim()}`);
  return Buffer.from(text);
}

/** Loads and sanity-checks PEM files; throws an Error naming the flag and path on any problem. */
export function loadTls(files: TlsFiles): TlsMaterial {
  return {
    ca: readPem(files.ca.flag, files.ca.path, /-----BEGIN CERTIFICATE-----/),
    cert: readPem(files.cert.flag, files.cert.path, /-----BEGIN CERTIFICATE-----/),
    key: readPem(files.key.flag, files.key.path, /-----BEGIN (RSA |EC )?PRIVATE KEY-----/),
  };
}

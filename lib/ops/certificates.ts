/**
 * Certificate, key and CA files: read with errors that name the flag, checked at start and on
 * every reload (the key must belong to the certificate, as Go's LoadX509KeyPair insists), watched
 * for rotation, and their expiry exported as a metric and warned about in advance.
 *
 * @module
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, unwatchFile, watchFile } from "node:fs";
import type { TlsMaterial } from "../transport/mod.ts";
import type { Logger } from "./log.ts";
import { Gauge, type Registry } from "./metrics.ts";

/** A file named by a flag. */
export interface FlagFile {
  flag: string;
  path: string;
}

/** The files of one TLS identity: certificate and key, and the CA that verifies peers if any. */
export interface CertificateFiles {
  cert: FlagFile;
  key: FlagFile;
  ca?: FlagFile;
}

/** The PEM contents of {@link CertificateFiles}. */
export interface PemSet {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

const CERTIFICATE = { marker: /-----BEGIN CERTIFICATE-----/, what: "certificate" };
const PRIVATE_KEY = { marker: /-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----/, what: "private key" };
/** Certificates this close to their end are warned about at start and on every reload. */
const EXPIRY_WARNING_MS = 30 * 24 * 3600 * 1000;

function readPem(file: FlagFile, expected: { marker: RegExp; what: string }): Buffer {
  if (!file.path) throw new Error(`--${file.flag} is required`);
  let text: string;
  try {
    text = readFileSync(file.path, "utf8");
  } catch (err) {
    throw new Error(`--${file.flag}: cannot read ${file.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!expected.marker.test(text)) throw new Error(`--${file.flag}: ${file.path} holds no PEM ${expected.what}`);
  return Buffer.from(text);
}

/**
 * Reads the files and checks that the private key belongs to the certificate; throws an Error
 * naming the flags and paths on any problem.
 */
export function loadPemSet(files: CertificateFiles): PemSet {
  const pems: PemSet = {
    cert: readPem(files.cert, CERTIFICATE),
    key: readPem(files.key, PRIVATE_KEY),
    ca: files.ca ? readPem(files.ca, CERTIFICATE) : undefined,
  };
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pems.cert);
  } catch (err) {
    throw new Error(`--${files.cert.flag}: ${files.cert.path} is not a readable certificate: ${(err as Error).message}`);
  }
  let matches: boolean;
  try {
    matches = certificate.checkPrivateKey(createPrivateKey(pems.key));
  } catch (err) {
    throw new Error(`--${files.key.flag}: ${files.key.path} is not a readable private key: ${(err as Error).message}`);
  }
  if (!matches) {
    throw new Error(
      `--${files.key.flag} ${files.key.path} is not the private key of the certificate in --${files.cert.flag} ${files.cert.path}`,
    );
  }
  return pems;
}

/** The QUIC identity in `pems`, which must hold a CA. */
export function tlsMaterial(pems: PemSet): TlsMaterial {
  if (!pems.ca) throw new Error("a CA file is required");
  return { cert: pems.cert, key: pems.key, ca: pems.ca };
}

/** Loads a QUIC identity with its CA; throws an Error naming the flag and path on any problem. */
export function loadTls(files: Required<CertificateFiles>): TlsMaterial {
  return tlsMaterial(loadPemSet(files));
}

/** What is wrong with `certificate`'s validity now, or undefined; warns about the coming end. */
export function validityProblem(certificate: X509Certificate, now = Date.now()): string | undefined {
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  if (now < from) return `is not valid yet: valid from ${certificate.validFrom}`;
  if (now > to) return `expired on ${certificate.validTo}`;
  if (to - now < EXPIRY_WARNING_MS) return `expires in ${Math.floor((to - now) / (24 * 3600 * 1000))} days, on ${certificate.validTo}`;
  return undefined;
}

/**
 * Polls `paths` (so that renames and symlink swaps, as Kubernetes secret updates do, are seen) and
 * calls `onSettled` once they have stopped changing. Returns a function that stops watching.
 */
function watchFiles(paths: string[], onSettled: () => void, intervalMs = 1000): () => void {
  let pending: ReturnType<typeof setTimeout> | undefined;
  const changed = () => {
    // Files of one rotation change within moments of each other: load once they settle.
    clearTimeout(pending);
    pending = setTimeout(onSettled, 200);
  };
  for (const path of paths) watchFile(path, { interval: intervalMs }, changed);
  return () => {
    clearTimeout(pending);
    for (const path of paths) unwatchFile(path, changed);
  };
}

/** Per registry: each watched certificate file's flag and expiry (Unix seconds). */
const expiriesOf = new WeakMap<Registry, Map<string, { flag: string; seconds: number }>>();

/** Records the certificate files' ends for `quic_tunnel_certificate_expiry_timestamp_seconds`. */
function trackExpiry(registry: Registry, files: CertificateFiles, pems: PemSet): void {
  let expiries = expiriesOf.get(registry);
  if (expiries === undefined) {
    const known = new Map<string, { flag: string; seconds: number }>();
    new Gauge(
      registry,
      "quic_tunnel_certificate_expiry_timestamp_seconds",
      "When each certificate file's (first) certificate expires, as a Unix time.",
      () => [...known].map(([file, { flag, seconds }]) => [{ file, flag }, seconds]),
    );
    expiriesOf.set(registry, known);
    expiries = known;
  }
  for (const [file, pem] of [
    [files.cert, pems.cert],
    [files.ca, pems.ca],
  ] as const) {
    if (file && pem) expiries.set(file.path, { flag: file.flag, seconds: Date.parse(new X509Certificate(pem).validTo) / 1000 });
  }
}

/** Logs what is wrong or about to be with the certificates of `pems`. */
function warnValidity(log: Logger, files: CertificateFiles, pems: PemSet): void {
  for (const [file, pem] of [
    [files.cert, pems.cert],
    [files.ca, pems.ca],
  ] as const) {
    if (!file || !pem) continue;
    const problem = validityProblem(new X509Certificate(pem));
    if (problem) log.warn("certificate in --{flag} {path} {problem}", { flag: file.flag, path: file.path, problem });
  }
}

/** What {@link watchCertificates} returns. */
export interface CertificateWatch {
  /** Loads the files now, as a change does (SIGHUP); the log names `cause`. */
  reload(cause: string): void;
  /** Stops watching. */
  stop(): void;
}

/**
 * Checks the files' validity now (warning about expired, not yet valid, or soon expiring ones),
 * exports their expiry, and watches them: a changed set that loads and checks is handed to
 * `onChange`; a broken one, or one `onChange` refuses by throwing, is logged and the previous one
 * kept. {@link CertificateWatch.reload} does the same at once.
 */
export function watchCertificates(
  files: CertificateFiles,
  handlers: { log: Logger; registry: Registry; onChange: (pems: PemSet) => void },
): CertificateWatch {
  const { log, registry } = handlers;
  const pems = loadPemSet(files);
  trackExpiry(registry, files, pems);
  warnValidity(log, files, pems);
  const flags = [files.cert, files.key, files.ca].flatMap((file) => (file ? [`--${file.flag}`] : [])).join(", ");
  const load = (cause?: string) => {
    try {
      const fresh = loadPemSet(files);
      trackExpiry(registry, files, fresh);
      warnValidity(log, files, fresh);
      handlers.onChange(fresh);
    } catch (err) {
      log.error("certificate reload failed, keeping the previous certificates: {error}", { error: err, cause });
      return;
    }
    if (cause) log.info("certificate files reloaded on {cause} ({flags}); new handshakes use them", { cause, flags });
    else log.info("certificate files changed ({flags}); new handshakes use them", { flags });
  };
  const stop = watchFiles([files.cert.path, files.key.path, ...(files.ca ? [files.ca.path] : [])], () => load());
  return { reload: load, stop };
}

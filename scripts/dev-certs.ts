/**
 * Development certificates made with the `openssl` command: a CA, a server certificate for
 * `quic-tunnel-server`/`localhost`/127.0.0.1/::1 and a client certificate, as the Go reference's
 * `hack/gencerts.sh` makes them. For local use and tests, never for production.
 *
 * @module
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Paths of the files {@link ensureDevCerts} writes. */
export interface DevCertPaths {
  ca: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Options for {@link ensureDevCerts}. */
export interface DevCertOptions {
  /** Common name of the client certificate (default `quic-tunnel-agent`). */
  clientName?: string;
  /** Common name of the CA, so that tests can make a second, unrelated CA. */
  caName?: string;
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? "";
    throw new Error(`openssl ${args[0]} failed in ${dir}: ${stderr || (err as Error).message}`);
  }
}

/**
 * Creates the development CA and certificates in `dir` unless they exist already, and returns their
 * paths. Needs the `openssl` command.
 */
export function ensureDevCerts(dir: string, options: DevCertOptions = {}): DevCertPaths {
  const paths: DevCertPaths = {
    ca: join(dir, "ca.crt"),
    caKey: join(dir, "ca.key"),
    serverCert: join(dir, "tls.crt"),
    serverKey: join(dir, "tls.key"),
    clientCert: join(dir, "client.crt"),
    clientKey: join(dir, "client.key"),
  };
  if (Object.values(paths).every((path) => existsSync(path))) return paths;
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "server.ext"),
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" +
      "subjectAltName=DNS:quic-tunnel-server,DNS:localhost,IP:127.0.0.1,IP:::1\n",
  );
  writeFileSync(
    join(dir, "client.ext"),
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
  );
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(dir, [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "365",
    "-subj",
    `/CN=${options.caName ?? "quic-tunnel-dev-ca"}`,
  ]);
  for (const [name, cn] of [
    ["tls", "quic-tunnel-server"],
    ["client", options.clientName ?? "quic-tunnel-agent"],
  ]) {
    const ext = name === "tls" ? "server.ext" : "client.ext";
    openssl(dir, ["req", "-new", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`]);
    openssl(dir, [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "365",
      "-extfile",
      ext,
      "-out",
      `${name}.crt`,
    ]);
  }
  return paths;
}

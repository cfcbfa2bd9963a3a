/**
 * Explaining a refused server certificate in words an operator can act on: which names it carries
 * when --server-name is not among them, who issued it when --ca-file does not hold that CA, and
 * whether it is expired or not valid yet (a TLS alert says "bad certificate" for all of these).
 *
 * @module
 */
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { validityProblem } from "../ops/certificates.ts";

/** The certificates of a PEM bundle. */
function bundle(pem: Uint8Array): X509Certificate[] {
  const text = Buffer.from(pem).toString("utf8");
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((match) => new X509Certificate(match[0]));
}

/** The names a certificate answers to: its CN and its subject alternative names. */
export function certificateNames(certificate: X509Certificate): string[] {
  const cn = certificate.subject.split("\n").flatMap((part) => (part.startsWith("CN=") ? [`CN=${part.slice(3)}`] : []));
  const alt = (certificate.subjectAltName ?? "").split(", ").filter(Boolean);
  return [...cn, ...alt];
}

/**
 * What is wrong with the server's `certificate` for an agent that expects `serverName` and trusts
 * the CAs of `ca`, or undefined when nothing is.
 */
export function explainServerCertificate(
  certificate: X509Certificate,
  expected: { serverName: string; ca: Uint8Array },
): string | undefined {
  const problems: string[] = [];
  const matches = isIP(expected.serverName) ? certificate.checkIP(expected.serverName) : certificate.checkHost(expected.serverName);
  if (matches === undefined) {
    problems.push(
      `it does not carry --server-name ${expected.serverName}; it carries ${certificateNames(certificate).join(", ") || "no name"}`,
    );
  }
  const cas = bundle(expected.ca);
  if (!cas.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))) {
    const trusted = cas.map((ca) => ca.subject.replaceAll("\n", ",")).join("; ");
    problems.push(`it was issued by ${certificate.issuer.replaceAll("\n", ",")}, not by a CA of --ca-file (${trusted || "none"})`);
  }
  const validity = validityProblem(certificate);
  if (validity && !validity.startsWith("expires in")) problems.push(`it ${validity}`);
  return problems.length > 0
    ? `the server certificate ${certificate.subject.replaceAll("\n", ",")} is refused: ${problems.join("; ")}`
    : undefined;
}

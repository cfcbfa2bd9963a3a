/**
 * Errors of the QUIC layer, and close codes in words (TLS alerts by name) for every engine.
 *
 * @module
 */

/** An error of the QUIC layer; `code` is the QUIC or application error code when there is one. */
export class QuicError extends Error {
  /** The QUIC transport or application error code, when the error carries one. */
  readonly code?: number;
  constructor(message: string, options: { code?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "QuicError";
    this.code = options.code;
  }
}

const TLS_ALERTS: Record<number, string> = {
  40: "handshake failure",
  42: "bad certificate",
  43: "unsupported certificate",
  44: "certificate revoked",
  45: "certificate expired or not yet valid",
  46: "certificate unknown",
  48: "unknown CA",
  49: "access denied",
  80: "internal error",
  112: "unrecognized name",
  116: "certificate required",
  120: "no application protocol",
};

/** The QUIC transport error code that carries TLS alert `alert` (RFC 9001 section 4.8). */
export function tlsAlertCode(alert: number): number {
  return 0x100 + alert;
}

/**
 * Describes a CONNECTION_CLOSE: TLS alerts by name, application codes as such, and the peer's
 * reason phrase when it sent one.
 */
export function describeClose(close: { isApp: boolean; code: number; reason?: string }): string {
  let text: string;
  if (close.isApp) text = `application code ${close.code}`;
  else if (close.code >= 0x100 && close.code <= 0x1ff) {
    const alert = close.code - 0x100;
    text = `TLS alert ${alert} (${TLS_ALERTS[alert] ?? "unknown"})`;
  } else text = `transport code 0x${close.code.toString(16)}`;
  return close.reason ? `${text}: ${close.reason}` : text;
}

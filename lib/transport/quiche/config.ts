/**
 * quiche configuration for one side of a mutual-TLS connection.
 *
 * @module
 */
import type { TransportOptions } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { TlsMaterial } from "../types.ts";
import { type Config, quiche } from "./binding.ts";
import { MAX_DATAGRAM } from "./datagram.ts";

const SIGALGS = [
  "rsa_pkcs1_sha256",
  "rsa_pkcs1_sha384",
  "rsa_pkcs1_sha512",
  "rsa_pss_rsae_sha256",
  "rsa_pss_rsae_sha384",
  "rsa_pss_rsae_sha512",
  "ecdsa_secp256r1_sha256",
  "ecdsa_secp384r1_sha384",
  "ecdsa_secp521r1_sha512",
  "ed25519",
].join(":");

/**
 * The max_ack_delay this endpoint announces (RFC 9000 §18.2; the default is 25 ms), which the
 * peer adds to every loss timer (PTO, RFC 9002 §6.2). quiche acknowledges in the next packets it
 * builds, and we build them in the event-loop turn that received the datagrams, so 25 ms only
 * delayed the recovery of every lost last packet: 2,000 short tunnels through 10% loss took 17.4
 * s with 25, 10.3 with 5 and 7.3 with 2 (the Go reference 20.3), with no change on clean paths.
 * A turn that runs late counts toward the peer's RTT estimate, not against this promise.
 */
export const ANNOUNCED_MAX_ACK_DELAY_MS = 2;

/**
 * Builds a quiche config that presents `tls.cert` and verifies the peer against `tls.ca` (unless
 * `verifyPeer` is false: only to read a peer's certificate when explaining a failed handshake).
 */
export function buildConfig(tls: TlsMaterial, options: TransportOptions, verifyPeer = true): Config {
  let config: Config;
  try {
    config = quiche.Config.withBoringSslCtx(verifyPeer, false, tls.ca, [tls.key], [tls.cert], SIGALGS);
  } catch (err) {
    throw new QuicError(`TLS configuration rejected: ${(err as Error).message}`, { cause: err });
  }
  config.setApplicationProtos([options.alpn]);
  config.setMaxIdleTimeout(options.idleTimeoutMs);
  config.setMaxRecvUdpPayloadSize(MAX_DATAGRAM);
  config.setMaxSendUdpPayloadSize(options.maxUdpPayload);
  config.setInitialMaxData(options.connectionWindow);
  config.setInitialMaxStreamDataBidiLocal(options.streamWindow);
  config.setInitialMaxStreamDataBidiRemote(options.streamWindow);
  config.setInitialMaxStreamDataUni(0);
  config.setInitialMaxStreamsBidi(options.maxStreams);
  config.setInitialMaxStreamsUni(0);
  config.setMaxStreamWindow(Math.max(options.streamWindow, 16 << 20));
  config.setMaxConnectionWindow(Math.max(options.connectionWindow, 24 << 20));
  config.setDisableActiveMigration(true);
  config.setCcAlgorithmName(options.congestionControl);
  config.setMaxAckDelay(ANNOUNCED_MAX_ACK_DELAY_MS);
  config.grease(true);
  return config;
}

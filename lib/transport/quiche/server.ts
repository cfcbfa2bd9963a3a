/**
 * A QUIC server endpoint of the quiche engine: connection-ID routing, version negotiation,
 * stateless Retry, and limits on handshakes so that a stranger's Initials cannot make the server
 * keep unbounded state. What it refuses is counted in {@link QuicheServer.stats}, not logged per
 * packet.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { isIP } from "node:net";
import { type AdmissionRefusal, HandshakeAdmission } from "../../admission.ts";
import { formatHostPort } from "../../hostport.ts";
import { DEFAULT_TRANSPORT } from "../../protocol.ts";
import { QuicError } from "../errors.ts";
import type { ListenOptions, QuicServer, ServerEvents, ServerStats, TlsMaterial, TransportOptions } from "../types.ts";
import { type Config, type Connection, quiche } from "./binding.ts";
import { buildConfig } from "./config.ts";
import { type PathInfo, QuicheConnection } from "./connection.ts";
import { bindDatagramSocket, type DatagramSocket, type DatagramSource, MAX_DATAGRAM } from "./datagram.ts";
import { PacketType, parseInvariantHeader, parseLongHeader, versionAction } from "./packet.ts";
import { RetryTokens } from "./retry-token.ts";

const CID_LENGTH = 20;

/**
 * Why a long-header packet got no connection, the keys of {@link ServerStats.refused}: an Initial
 * refused, or a packet of a version this server does not speak (answered with Version Negotiation,
 * or dropped: too small to answer, or a Version Negotiation packet itself).
 */
type Refusal =
  | AdmissionRefusal
  | "short_initial"
  | "invalid_token"
  | "accept_failed"
  | "unsupported_version"
  | "short_unsupported_version"
  | "version_negotiation";

/** The server endpoint; see {@link QuicServer}. */
export class QuicheServer extends EventEmitter<ServerEvents> implements QuicServer {
  readonly #socket: DatagramSocket;
  #config: Config;
  readonly #transport: TransportOptions;
  readonly #retry: boolean;
  readonly #admission: HandshakeAdmission;
  readonly #tokens = new RetryTokens();
  readonly #connections = new Map<string, QuicheConnection>();
  readonly #refused: Record<Refusal, number> = {
    short_initial: 0,
    invalid_token: 0,
    handshake_limit: 0,
    address_limit: 0,
    accept_failed: 0,
    unsupported_version: 0,
    short_unsupported_version: 0,
    version_negotiation: 0,
  };
  readonly #sendBuffer = Buffer.allocUnsafe(MAX_DATAGRAM);

  constructor(
    socket: DatagramSocket,
    options: { config: Config; transport: TransportOptions; retry: boolean; admission: HandshakeAdmission },
  ) {
    super();
    this.#socket = socket;
    this.#config = options.config;
    this.#transport = options.transport;
    this.#retry = options.retry;
    this.#admission = options.admission;
    socket.onMessage((datagram, source) => this.#onDatagram(datagram, source));
  }

  setTls(tls: TlsMaterial): void {
    this.#config = buildConfig(tls, this.#transport);
  }

  address(): { host: string; port: number } {
    return { ...this.#socket.local };
  }

  stats(): ServerStats {
    return { handshakesInProgress: this.#admission.count, refused: { ...this.#refused } };
  }

  close(): Promise<void> {
    for (const connection of new Set(this.#connections.values())) connection.close(0, "server shutting down");
    return this.#socket.close();
  }

  #refuse(reason: Refusal): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }

  #onDatagram(datagram: Buffer, source: DatagramSource): void {
    const path: PathInfo = { from: { host: source.address, port: source.port }, to: this.#socket.local };
    if ((datagram[0] & 0x80) === 0) {
      // Short header: the destination connection id is the next CID_LENGTH bytes.
      if (datagram.length < 1 + CID_LENGTH) return;
      this.#connections.get(datagram.toString("hex", 1, 1 + CID_LENGTH))?.receive(datagram, path);
      return;
    }
    // Parsed here rather than by quiche: a flood of Initials must cost as little as possible each.
    // First only what every QUIC version shares: the rest of a packet of another version is not
    // laid out as version 1's, so whether it is answered must not depend on those bytes.
    const invariant = parseInvariantHeader(datagram);
    if (invariant === undefined) return;
    // The destination connection ID starts at byte 6 of a long header.
    const existing = this.#connections.get(datagram.toString("hex", 6, 6 + invariant.dcid.length));
    if (existing) {
      existing.receive(datagram, path);
      return;
    }
    const action = versionAction(datagram, quiche.versionIsSupported);
    if (action === "negotiate") {
      const length = quiche.negotiateVersion(invariant.scid, invariant.dcid, this.#sendBuffer);
      this.#socket.sendTo(this.#sendBuffer.subarray(0, length), source.address, source.port);
      this.#refuse("unsupported_version");
      return;
    }
    if (action === "drop") {
      this.#refuse(invariant.version === 0 ? "version_negotiation" : "short_unsupported_version");
      return;
    }
    const header = parseLongHeader(datagram);
    if (header === undefined || header.type !== PacketType.Initial) return;
    if (datagram.length < quiche.MIN_CLIENT_INITIAL_LEN) {
      this.#refuse("short_initial");
      return;
    }
    const address = `${source.address}|${source.port}`;
    let scid: Buffer;
    let originalDcid: Buffer | null = null;
    if (this.#retry) {
      if (header.token.length === 0) {
        const retryScid = randomBytes(CID_LENGTH);
        const token = this.#tokens.mint(address, header.dcid, retryScid);
        const length = quiche.retry(header.scid, header.dcid, retryScid, token, header.version, this.#sendBuffer);
        this.#socket.sendTo(this.#sendBuffer.subarray(0, length), source.address, source.port);
        return;
      }
      originalDcid = this.#tokens.validate(header.token, address, header.dcid) ?? null;
      if (originalDcid === null) {
        this.#refuse("invalid_token");
        return;
      }
      scid = Buffer.from(header.dcid);
    } else {
      scid = randomBytes(CID_LENGTH);
    }
    const handshakeOver = this.#admission.admit(source.address);
    if (typeof handshakeOver === "string") {
      this.#refuse(handshakeOver);
      return;
    }
    this.#accept({ scid, originalDcid, dcid: Buffer.from(header.dcid) }, datagram, path, handshakeOver);
  }

  #accept(
    ids: { scid: Buffer; originalDcid: Buffer | null; dcid: Buffer },
    datagram: Buffer,
    path: PathInfo,
    handshakeOver: () => void,
  ): void {
    let native: Connection;
    try {
      native = quiche.Connection.accept(ids.scid, ids.originalDcid, path.to, path.from, this.#config);
    } catch {
      handshakeOver();
      this.#refuse("accept_failed");
      return;
    }
    const peer = formatHostPort(path.from);
    const connection = new QuicheConnection(native, {
      isServer: true,
      peer,
      send: this.#socket.send,
      transport: this.#transport,
      onEstablished: () => {
        handshakeOver();
        this.emit("connection", connection);
      },
    });
    const keys = [ids.scid.toString("hex"), ids.dcid.toString("hex")];
    for (const key of keys) this.#connections.set(key, connection);
    connection.once("close", (error) => {
      for (const key of keys) this.#connections.delete(key);
      if (!connection.established) {
        handshakeOver();
        this.emit("rejected", peer, error);
      }
    });
    connection.receive(datagram, path);
  }
}

/** Binds a server endpoint; rejects with the address in the message when binding fails. */
export async function listen(options: ListenOptions): Promise<QuicheServer> {
  // A server sends no keep-alives of its own: agents do, and an idle agent is the agent's call.
  const transport = { ...DEFAULT_TRANSPORT, ...options.transport, keepAliveMs: 0 };
  const config = buildConfig(options.tls, transport);
  const socket = await bindDatagramSocket({ host: options.host, port: options.port, family: isIP(options.host) === 6 ? 6 : 4 }).catch(
    (err) => {
      throw new QuicError(`cannot listen for QUIC on ${formatHostPort(options)}: ${err.message}`, { cause: err });
    },
  );
  return new QuicheServer(socket, {
    config,
    transport,
    retry: options.retry ?? true,
    admission: new HandshakeAdmission(options.limits),
  });
}

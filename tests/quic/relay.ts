/**
 * An in-process UDP relay between one QUIC client and a server, whose `drop` hook decides, per
 * datagram and direction, what is lost: for tests that need a particular packet to go missing.
 *
 * @module
 */
import dgram from "node:dgram";

/** Direction of a datagram through the relay. */
export type Direction = "to-server" | "to-client";

/** A running relay. */
export interface UdpRelay {
  /** The port clients dial. */
  port: number;
  /** Datagrams dropped so far. */
  dropped: number;
  close(): void;
}

/** Relays between the latest client and `serverPort`; `drop` returns true to lose a datagram. */
export async function udpRelay(serverPort: number, drop: (direction: Direction, datagram: Buffer) => boolean): Promise<UdpRelay> {
  const front = dgram.createSocket("udp4");
  const back = dgram.createSocket("udp4");
  let client: dgram.RemoteInfo | undefined;
  const relay: UdpRelay = {
    port: 0,
    dropped: 0,
    close: () => {
      front.close();
      back.close();
    },
  };
  front.on("message", (datagram, rinfo) => {
    client = rinfo;
    if (drop("to-server", datagram)) relay.dropped++;
    else back.send(datagram, serverPort, "127.0.0.1");
  });
  back.on("message", (datagram) => {
    if (!client) return;
    if (drop("to-client", datagram)) relay.dropped++;
    else front.send(datagram, client.port, client.address);
  });
  await new Promise<void>((resolve) => front.bind(0, "127.0.0.1", resolve));
  await new Promise<void>((resolve) => back.bind(0, "127.0.0.1", resolve));
  relay.port = front.address().port;
  return relay;
}

/**
 * An in-process UDP relay between one QUIC client and a server, whose `drop` hook decides, per
 * datagram and direction, what is lost: for tests that need a particular packet to go missing. It
 * can also rebind like a NAT: the client's traffic then reaches the server from a new port, and
 * what the server still sends to the old one is lost.
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
  /** Moves the client's traffic to a new source port toward the server and forgets the old one. */
  rebind(): Promise<void>;
  close(): void;
}

/** Relays between the latest client and `serverPort`; `drop` returns true to lose a datagram. */
export async function udpRelay(serverPort: number, drop: (direction: Direction, datagram: Buffer) => boolean): Promise<UdpRelay> {
  const front = dgram.createSocket("udp4");
  let client: dgram.RemoteInfo | undefined;
  const bindBack = async () => {
    const socket = dgram.createSocket("udp4");
    socket.on("message", (datagram) => {
      if (!client) return;
      if (drop("to-client", datagram)) relay.dropped++;
      else front.send(datagram, client.port, client.address);
    });
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
    return socket;
  };
  let back = await bindBack();
  const relay: UdpRelay = {
    port: 0,
    dropped: 0,
    rebind: async () => {
      const old = back;
      back = await bindBack();
      old.close();
    },
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
  await new Promise<void>((resolve) => front.bind(0, "127.0.0.1", resolve));
  relay.port = front.address().port;
  return relay;
}

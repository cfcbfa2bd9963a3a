/**
 * TCP dialing with a deadline, failing with the HTTP status a CONNECT proxy answers.
 *
 * @module
 */
import net from "node:net";
import { formatHostPort, type HostPort } from "../hostport.ts";
import { HttpError } from "./connect.ts";

/**
 * Connects to `target` with half-close enabled. Rejects with {@link HttpError} 504 when the dial
 * takes longer than `timeoutMs`, and 502 when it is refused, unreachable or the name does not resolve.
 */
export function dial(target: HostPort, options: { timeoutMs: number }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new HttpError(504, `dial ${formatHostPort(target)} timed out after ${options.timeoutMs} ms`));
    }, options.timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new HttpError(502, `dial ${formatHostPort(target)} failed: ${err.code ?? err.message}`));
    };
    socket.once("error", onError);
  });
}

/**
 * Graceful shutdown on SIGTERM/SIGINT: the first signal runs the role's drain (stop accepting, let
 * tunnels finish up to the grace period, close) and exits 0; a second signal exits at once.
 *
 * @module
 */
import type { Logger } from "./log.ts";

/** Installs the handlers; `drain` receives the grace period in ms. */
export function onShutdown(log: Logger, options: { graceMs: number; drain: (graceMs: number) => Promise<void> }): void {
  let draining = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      if (draining) {
        log.warn("received {signal} again, exiting now", { signal });
        process.exit(1);
      }
      draining = true;
      log.info("received {signal}, draining for up to {graceMs} ms", { signal, graceMs: options.graceMs });
      options.drain(options.graceMs).then(
        () => process.exit(0),
        (err) => {
          log.error("shutdown failed: {error}", { error: err });
          process.exit(1);
        },
      );
    });
  }
}

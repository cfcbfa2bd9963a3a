/**
 * The process around a role: graceful shutdown on SIGTERM/SIGINT (the first signal runs the role's
 * drain: stop accepting, let tunnels finish up to the grace period, close; a second exits at once),
 * certificates reloaded on SIGHUP, and a last word in the log for errors that escaped every handler.
 *
 * @module
 */
import type { CertificateWatch } from "./certificates.ts";
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

/**
 * Logs a promise rejection or exception that escaped every handler, with what it carries, instead
 * of letting the runtime print a bare stack or exit without a word. An uncaught exception still
 * ends the process (its state is unknown); a stray rejection does not.
 */
export function logStrayErrors(log: Logger): void {
  process.on("unhandledRejection", (reason) => {
    log.error("unhandled promise rejection: {error}", { error: reason, stack: (reason as Error)?.stack });
  });
  process.on("uncaughtException", (err) => {
    log.fatal("uncaught exception, exiting: {error}", { error: err, stack: err.stack });
    process.exit(70);
  });
}

/**
 * Reloads `watches` on SIGHUP, the conventional reload signal, which is also what a process gets
 * when its terminal goes away: by default it would end the role and every tunnel. Installed before
 * the certificates are watched, so that a SIGHUP during start ends nothing either; `watches` may
 * grow afterwards. Each reload logs its outcome.
 */
export function onReload(log: Logger, watches: readonly CertificateWatch[]): void {
  process.on("SIGHUP", () => {
    if (watches.length === 0) log.info("received SIGHUP before the certificates were loaded; nothing to reload");
    for (const watch of watches) watch.reload("SIGHUP");
  });
}

/**
 * `ingestd serve`: the daemon. Signal handling (SIGTERM/SIGINT drain, SIGHUP reload), systemd notification,
 * then startServer. Resolves once listening; from then on the signal handlers end the process.
 */
import { parseArgs } from "node:util";
import { loadCheckedConfig } from "../security/checked-config";
import { createLogger } from "../ops/logger";
import { notifySystemd, takeNotifySocket } from "../ops/sd-notify";

export async function serveCommand(argv: string[]): Promise<void> {
  parseArgs({ args: argv, options: {} }); // serve takes no options: reject typos rather than ignore them
  const config = loadCheckedConfig();
  const log = createLogger(config.logLevel);
  // Before anything is spawned: the embedded PostgreSQL must not inherit systemd's notify socket.
  takeNotifySocket();
  // Loaded here, not at the top: check-config and --help must work where the native binary does not.
  const { startServer } = require("../front/server") as typeof import("../front/server");
  // Handlers go in before the server starts: a supervisor may send SIGTERM the moment it reads "listening",
  // and a signal that lands before process.on() would kill the daemon with the default action mid-start.
  let server: Awaited<ReturnType<typeof startServer>> | null = null;
  let pendingSignal: string | null = null;
  let stopping = false;
  const shutdown = (signal: string) => {
    if (server === null) {
      pendingSignal ??= signal;
      return;
    }
    if (stopping) {
      // A second Ctrl-C is an operator who will not wait; a repeated SIGTERM (supervisors may send one to
      // the whole process group) must not cut the drain short.
      if (signal === "SIGINT") {
        log.warn({ signal }, "second interrupt: exiting without waiting for the drain");
        process.exit(1);
      }
      return;
    }
    stopping = true;
    log.info({ signal }, "shutting down");
    void notifySystemd(["STOPPING=1", "STATUS=draining"], log);
    // The drain is bounded by the stop timeout even when a commit never returns (a hung database): past
    // it, exit without the rest. Nothing more is acknowledged, so this is as safe as kill -9. The drain
    // delay (still serving while a load balancer takes this daemon out) comes before it.
    setTimeout(() => {
      log.error(
        { stop_timeout_ms: config.stopTimeoutMs },
        "drain did not finish within the stop timeout; exiting, unanswered work was not acknowledged",
      );
      log.flush();
      process.exit(1);
    }, config.drainDelayMs + config.stopTimeoutMs).unref();
    server.stop().then(
      () => {
        log.flush();
        process.exit(0);
      },
      (err: Error) => {
        log.error({ err: err.message }, "shutdown failed");
        log.flush();
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  // API keys without a restart (a bad file keeps the old keys; see src/security/auth.ts); HLOG_PATH after logrotate.
  process.on("SIGHUP", () => server?.reload());
  server = await startServer(config, log);
  void notifySystemd(["READY=1", `STATUS=listening on ${config.host}:${server.port}`], log);
  if (pendingSignal !== null) shutdown(pendingSignal);
}

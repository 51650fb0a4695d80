/**
 * systemd readiness (sd_notify) without a native module.
 *
 * The protocol is one datagram to the unix socket in $NOTIFY_SOCKET. Node has no unix datagram sockets, so
 * the message is sent by `systemd-notify`, which ships with systemd itself. Two details make that sound:
 *  - the message comes from the child's pid, not ours, so the unit sets `NotifyAccess=all` (any process of
 *    the service's cgroup may notify);
 *  - systemd maps a message to its unit through the sender's cgroup, which fails once the sender has exited;
 *    systemd-notify (systemd >= 246) therefore waits, by default, until the manager has processed the
 *    message (a BARRIER=1 round trip), so the child is still alive when systemd reads it.
 * The socket is taken out of the environment at start: the daemon's own children (an embedded PostgreSQL
 * built with systemd support would announce its own readiness) must not speak for the service.
 */
import { execFile } from "node:child_process";
import type { Logger } from "./logger";

let socket: string | null = null;

/** Takes NOTIFY_SOCKET out of the environment (as sd_notify's unset_environment does); call before spawning. */
export function takeNotifySocket(env: NodeJS.ProcessEnv = process.env): string | null {
  socket = env.NOTIFY_SOCKET || null;
  delete env.NOTIFY_SOCKET;
  return socket;
}

/**
 * Sends `READY=1`, `STOPPING=1`, `STATUS=...` and the like when running under systemd with Type=notify;
 * resolves false (and logs) when it could not, true when sent, and at once when not under systemd.
 */
export function notifySystemd(assignments: readonly string[], log: Logger): Promise<boolean> {
  if (socket === null) return Promise.resolve(false);
  return new Promise((resolve) => {
    execFile(
      "systemd-notify",
      [...assignments],
      { env: { ...process.env, NOTIFY_SOCKET: socket! }, timeout: 10_000 },
      (err, _stdout, stderr) => {
        if (err) {
          log.error({ err: err.message, stderr: stderr.trim() }, "systemd-notify failed; systemd may not see this state");
          resolve(false);
        } else {
          resolve(true);
        }
      },
    );
  });
}

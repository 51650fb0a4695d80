/**
 * This daemon's presence on the database: one idle connection named `ingestd-daemon <instance id>` for the
 * daemon's life, so that any daemon can tell whether the one that wrote a `pending` batch row still runs
 * (docs/storage.md#batch-status-across-daemons). PostgreSQL ends the connection when the process dies,
 * SIGKILL included. A lost connection is opened again after a short pause.
 */
import { holdConnection, type HeldConnection } from "./held-connection";

const PREFIX = "ingestd-daemon ";
const RECONNECT_MS = 1000;

export type DaemonPresence = HeldConnection;

export function holdPresence(connectionString: string, instance: string): DaemonPresence {
  return holdConnection({ connectionString, applicationName: PREFIX + instance, reconnectMs: RECONNECT_MS });
}

/** SQL that is true when no daemon named by the text expression `instance` holds its presence connection. */
export function daemonGoneSql(instance: string): string {
  return `NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = '${PREFIX}' || ${instance})`;
}

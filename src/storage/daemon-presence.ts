/**
 * This daemon's presence on the database: one idle connection named `ingestd-daemon <instance id>` for the
 * daemon's life, so that any daemon can tell whether the one that wrote a `pending` batch row still runs
 * (docs/storage.md#batch-status-across-daemons). PostgreSQL ends the connection when the process dies,
 * SIGKILL included. A lost connection is opened again after a short pause.
 */
import pg from "pg";

const PREFIX = "ingestd-daemon ";
const RECONNECT_MS = 1000;

export interface DaemonPresence {
  close(): Promise<void>;
}

export function holdPresence(connectionString: string, instance: string): DaemonPresence {
  let client: pg.Client | null = null;
  let closed = false;
  let timer: NodeJS.Timeout | null = null;
  const retry = () => {
    client = null;
    if (closed || timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      void connect();
    }, RECONNECT_MS);
    timer.unref();
  };
  const connect = async () => {
    const c = new pg.Client({ connectionString, application_name: PREFIX + instance, connectionTimeoutMillis: 3000 });
    c.on("error", () => undefined);
    c.on("end", retry);
    try {
      await c.connect();
      if (closed) await c.end();
      else client = c;
    } catch {
      c.removeListener("end", retry);
      await c.end().catch(() => undefined);
      retry();
    }
  };
  void connect();
  return {
    async close() {
      closed = true;
      if (timer !== null) clearTimeout(timer);
      await client?.end().catch(() => undefined);
    },
  };
}

/** SQL that is true when no daemon named by the text expression `instance` holds its presence connection. */
export function daemonGoneSql(instance: string): string {
  return `NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = '${PREFIX}' || ${instance})`;
}

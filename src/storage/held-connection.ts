/**
 * A connection held open for the daemon's life and opened again after a pause when it is lost: the daemon's
 * presence (daemon-presence.ts) and the producer-session listener (producers.ts) each hold one. Errors never
 * escape: a lost or refused connection only schedules the next attempt.
 */
import pg from "pg";

export interface HeldConnection {
  close(): Promise<void>;
}

export interface HeldConnectionOptions {
  connectionString: string;
  applicationName: string;
  /** Pause before opening a lost connection again. */
  reconnectMs: number;
  /** Called on each new client before it connects (listeners). */
  prepare?: (client: pg.Client) => void;
  /** Run once connected (LISTEN …); a failure counts as a failed connect. */
  ready?: (client: pg.Client) => Promise<unknown>;
}

export function holdConnection(options: HeldConnectionOptions): HeldConnection {
  let client: pg.Client | null = null;
  let closed = false;
  let timer: NodeJS.Timeout | null = null;
  const retry = () => {
    client = null;
    if (closed || timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      void connect();
    }, options.reconnectMs);
    timer.unref();
  };
  const connect = async () => {
    const c = new pg.Client({
      connectionString: options.connectionString,
      application_name: options.applicationName,
      connectionTimeoutMillis: 3000,
    });
    c.on("error", () => undefined);
    c.on("end", retry);
    options.prepare?.(c);
    try {
      await c.connect();
      await options.ready?.(c);
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

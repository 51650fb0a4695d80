/**
 * The front thread's own small pools: one for schema at start, health checks and status queries, one for the
 * partition maintenance. Ingest traffic never goes through them; each worker has its own COPY connection.
 */
import pg from "pg";
import { redactUrl, type Logger } from "../ops/logger";

export interface DatabaseOptions {
  connectionString: string;
  /** How often the liveness probe runs. */
  probeIntervalMs: number;
}

export class Database {
  readonly pool: pg.Pool;
  private probeTimer: NodeJS.Timeout | null = null;
  private isUp = false;
  private lastError = "";
  private listeners: Array<(up: boolean) => void> = [];

  constructor(private readonly options: DatabaseOptions) {
    this.pool = new pg.Pool({
      connectionString: options.connectionString,
      max: 4,
      connectionTimeoutMillis: 2000,
      idleTimeoutMillis: 10000,
      application_name: "ingestd-front",
    });
    // An idle client losing its connection is reported here; the probe notices the outage.
    this.pool.on("error", () => undefined);
    this.maintenancePool = new pg.Pool({
      connectionString: options.connectionString,
      max: 2, // the hourly partition pass and the id state's 5-second one
      connectionTimeoutMillis: 5000,
      idleTimeoutMillis: 30000,
      application_name: "ingestd-maintenance",
    });
    this.maintenancePool.on("error", () => undefined);
  }

  /**
   * The partition and id-state maintenance's own connection: its long steps (a group filter streams millions
   * of keys, a rotation waits for the claims in flight) never take a connection the liveness probe or the
   * request paths need.
   */
  readonly maintenancePool: pg.Pool;

  /** Last probe result: ingest answers 503 at once while the database is known to be down. */
  get up(): boolean {
    return this.isUp;
  }

  get error(): string {
    return this.lastError;
  }

  onChange(listener: (up: boolean) => void): void {
    this.listeners.push(listener);
  }

  /** Runs `SELECT 1` with a short timeout and updates the up/down state. */
  async probe(): Promise<boolean> {
    let up: boolean;
    try {
      await this.pool.query({ text: "SELECT 1", query_timeout: 2000 } as pg.QueryConfig);
      up = true;
      this.lastError = "";
    } catch (err) {
      up = false;
      this.lastError = (err as Error).message;
    }
    if (up !== this.isUp) {
      this.isUp = up;
      for (const l of this.listeners) l(up);
    }
    return up;
  }

  startProbing(): void {
    const tick = async () => {
      await this.probe();
      this.probeTimer = setTimeout(tick, this.options.probeIntervalMs);
      this.probeTimer.unref();
    };
    void tick();
  }

  async close(): Promise<void> {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    await this.pool.end().catch(() => undefined);
    await this.maintenancePool.end().catch(() => undefined);
  }
}

/** One connection for start-up work, retried while PostgreSQL is still coming up (a fresh VM, a restart). */
export async function connectWithRetry(url: string, log: Logger, deadlineMs: number): Promise<pg.Client> {
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      return client;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() - started > deadlineMs)
        throw new Error(`cannot connect to PostgreSQL at ${redactUrl(url)}: ${(err as Error).message}`);
      log.warn({ attempt, err: (err as Error).message }, "PostgreSQL not reachable yet, retrying");
      await new Promise((r) => setTimeout(r, Math.min(2000, 200 * attempt)));
    }
  }
}

/**
 * The read pool (docs/http-api.md#reading-back): a few connections of the front thread's own, apart from the
 * workers' COPY connections and from the probe's pool, so reading back can never take a connection ingest
 * or /health needs. Every query runs under a statement timeout; reads beyond the pool's waiting bound are
 * refused at once rather than queued without end.
 */
import pg from "pg";
import type { ReadsConfig } from "../ops/config";

/** Why a read could not run: the route answers 503 with Retry-After. */
export class ReadUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReadUnavailable";
  }
}

/** SQLSTATE of a query cancelled by statement_timeout. */
const QUERY_CANCELED = "57014";

export class ReadPool {
  private readonly pool: pg.Pool;

  constructor(
    connectionString: string,
    private readonly config: ReadsConfig,
  ) {
    this.pool = new pg.Pool({
      connectionString,
      max: config.poolSize,
      connectionTimeoutMillis: config.statementTimeoutMs,
      idleTimeoutMillis: 10_000,
      application_name: "ingestd-read",
      statement_timeout: config.statementTimeoutMs,
      // Times in answers are ISO-8601 in UTC whatever the server's default time zone.
      options: "-c TimeZone=UTC",
    });
    this.pool.on("error", () => undefined);
  }

  /** Runs one read; ReadUnavailable when the pool is saturated, the database unreachable or the query too slow. */
  async query<T extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<pg.QueryResult<T>> {
    const saturated = this.pool.idleCount === 0 && this.pool.totalCount >= this.config.poolSize;
    if (saturated && this.pool.waitingCount >= this.config.maxWaiting) {
      throw new ReadUnavailable(`too many reads waiting (${this.pool.waitingCount}); retry later`);
    }
    try {
      return await this.pool.query<T>(text, values);
    } catch (err) {
      const e = err as Error & { code?: string };
      if (e.code === QUERY_CANCELED)
        throw new ReadUnavailable(`read took longer than ${this.config.statementTimeoutMs} ms and was cancelled`);
      if (e.code === undefined || /^(08|53|57)/.test(e.code)) throw new ReadUnavailable(`database unavailable: ${e.message}`);
      throw err;
    }
  }

  /** A client of the pool for a transaction (dead-letter replay claims its rows in one). */
  async connect(): Promise<pg.PoolClient> {
    try {
      return await this.pool.connect();
    } catch (err) {
      throw new ReadUnavailable(`database unavailable: ${(err as Error).message}`);
    }
  }

  close(): Promise<void> {
    return this.pool.end().catch(() => undefined);
  }
}

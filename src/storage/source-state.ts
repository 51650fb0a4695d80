/**
 * Pull sources' shared state in `ingest_sources` (docs/sources.md#state): the watermark, when the next run
 * is due, and how the last one went. With several daemons on one database each run happens once: a daemon
 * runs a source only while it holds the source's advisory lock (no two runs overlap) and after moving
 * `next_run_at` past now itself (no second run in the same slot).
 */
import type pg from "pg";
import { qualifiedName, SOURCES_TABLE } from "../shared/sql-identifiers";

export interface SourceRow {
  name: string;
  watermark: string | null;
  next_run_at: Date;
  last_run_at: Date | null;
  last_success_at: Date | null;
  last_error: string | null;
  consecutive_failures: number;
  runs: string;
  last_records: { accepted: number; duplicates: number; rejected: number; fetched: number; pages: number } | null;
  running_since: Date | null;
  running_on: string | null;
}

export interface RunResult {
  ok: boolean;
  error: string | null;
  /** The new watermark (success only; null: unchanged). */
  watermark: string | null;
  records: { accepted: number; duplicates: number; rejected: number; fetched: number; pages: number };
}

export class SourceState {
  private readonly table: string;

  constructor(
    private readonly pool: pg.Pool,
    schema: string,
  ) {
    this.table = qualifiedName(schema, SOURCES_TABLE);
  }

  /** A row per configured source (a new source is due at once). */
  async ensure(names: readonly string[]): Promise<void> {
    if (names.length > 0)
      await this.pool.query(`INSERT INTO ${this.table} (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, [names]);
  }

  async rows(): Promise<SourceRow[]> {
    const { rows } = await this.pool.query<SourceRow>(`SELECT * FROM ${this.table} ORDER BY name`);
    return rows;
  }

  async row(name: string): Promise<SourceRow | null> {
    const { rows } = await this.pool.query<SourceRow>(`SELECT * FROM ${this.table} WHERE name = $1`, [name]);
    return rows[0] ?? null;
  }

  /**
   * Takes the source's run: its advisory lock on a connection held until `finish`, then the slot (moves
   * next_run_at to now + every) unless `force`. `locked`: another connection holds the source (a run, or a
   * daemon looking at its schedule); `not_due` (not forced): someone else ran this slot.
   */
  async claim(name: string, everyMs: number, force: boolean, daemon: string): Promise<SourceRun | "locked" | "not_due"> {
    const client = await this.pool.connect();
    try {
      const { rows: locked } = await client.query<{ ok: boolean }>(
        `SELECT pg_try_advisory_lock(hashtext('ingestd.source'), hashtext($1)) AS ok`,
        [name],
      );
      if (!locked[0].ok) {
        client.release();
        return "locked";
      }
      // `before`: the slot as it was, for giveBack.
      const { rows } = await client.query<{ watermark: string | null; previous: Date }>(
        `UPDATE ${this.table} AS s SET next_run_at = now() + $2 * interval '1 millisecond', running_since = now(), running_on = $4
           FROM (SELECT next_run_at AS previous FROM ${this.table} WHERE name = $1) AS before
          WHERE s.name = $1 AND ($3 OR s.next_run_at <= now()) RETURNING s.watermark, before.previous`,
        [name, everyMs, force, daemon],
      );
      if (rows.length === 0) {
        await client.query(`SELECT pg_advisory_unlock(hashtext('ingestd.source'), hashtext($1))`, [name]);
        client.release();
        return "not_due";
      }
      return new SourceRun(client, this.table, name, rows[0].watermark, rows[0].previous);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
  }
}

/** A run in progress: holds the source's lock until finished. */
export class SourceRun {
  constructor(
    private readonly client: pg.PoolClient,
    private readonly table: string,
    readonly name: string,
    /** The watermark at the start of the run: sent to the API. */
    readonly watermark: string | null,
    /** When the slot was due before this claim moved it. */
    private readonly due: Date,
  ) {}

  /** Lets go of a claimed run not made (the daemon is stopping): its slot is due again as it was, uncounted. */
  async giveBack(): Promise<void> {
    await this.release(`UPDATE ${this.table} SET next_run_at = $2, running_since = NULL, running_on = NULL WHERE name = $1`, [
      this.name,
      this.due,
    ]);
  }

  /** Records the outcome (a failed run keeps its watermark) and lets go of the lock. */
  async finish(result: RunResult): Promise<void> {
    await this.release(
      `UPDATE ${this.table} SET last_run_at = now(), runs = runs + 1, running_since = NULL, running_on = NULL,
          last_records = $2, last_error = $3,
          consecutive_failures = CASE WHEN $4 THEN 0 ELSE consecutive_failures + 1 END,
          last_success_at = CASE WHEN $4 THEN now() ELSE last_success_at END,
          watermark = CASE WHEN $4 AND $5::text IS NOT NULL THEN $5 ELSE watermark END
        WHERE name = $1`,
      [this.name, JSON.stringify(result.records), result.error, result.ok, result.watermark],
    );
  }

  /** The run's last statement, then the lock and the connection let go. */
  private async release(sql: string, params: unknown[]): Promise<void> {
    try {
      await this.client.query(sql, params);
      await this.client.query(`SELECT pg_advisory_unlock(hashtext('ingestd.source'), hashtext($1))`, [this.name]);
      this.client.release();
    } catch (err) {
      // The session lock goes with the connection.
      this.client.release(err as Error);
      throw err;
    }
  }
}

import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";

/**
 * One worker's PostgreSQL connection and the COPY statements it runs. The common path is a single
 * autocommitted COPY per batch; only when PostgreSQL rejects a row does the batch go through a transaction
 * with savepoints that isolates the offending rows and commits the rest.
 */

export interface RowFailure {
  row: number;
  code: string;
  message: string;
}

/** PostgreSQL refused the data of a row (data exception, integrity violation, program limit). */
function isRowError(err: unknown): err is pg.DatabaseError {
  const code = (err as pg.DatabaseError | undefined)?.code;
  return typeof code === "string" && /^(22|23|54)/.test(code);
}

/** The 1-based COPY input line PostgreSQL names in the error context, if any. */
function failingLine(err: pg.DatabaseError): number | null {
  const m = /COPY [^,]+, line (\d+)/.exec(err.where ?? "");
  return m ? Number(m[1]) : null;
}

export class DatabaseUnavailable extends Error {
  constructor(cause: unknown) {
    super(`database unavailable: ${(cause as Error)?.message ?? String(cause)}`);
  }
}

export interface CopyWriterOptions {
  connectionString: string;
  applicationName: string;
}

export class CopyWriter {
  private client: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;

  constructor(private readonly options: CopyWriterOptions) {}

  /**
   * Commits `rows` (COPY text lines, each ending in a newline) into `table`. Returns the rows PostgreSQL
   * refused; every other row is committed when this resolves. Throws DatabaseUnavailable when the
   * outcome is not a commit (connection lost, server down): then nothing may be acknowledged.
   */
  async copyRows(copySql: string, rows: string[]): Promise<RowFailure[]> {
    const client = await this.connection();
    try {
      await this.copy(client, copySql, rows, 0, rows.length);
      return [];
    } catch (err) {
      if (!isRowError(err)) throw this.fail(err);
    }
    const failures: RowFailure[] = [];
    try {
      await client.query("BEGIN");
      await this.isolate(client, copySql, rows, 0, rows.length, failures);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw this.fail(err);
    }
    return failures;
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    if (client) await client.end().catch(() => undefined);
  }

  /** COPY rows [from, to) inside a savepoint; on a row error, skip the named row (or bisect) and retry. */
  private async isolate(
    client: pg.Client,
    copySql: string,
    rows: string[],
    from: number,
    to: number,
    failures: RowFailure[],
  ): Promise<void> {
    if (from >= to) return;
    await client.query("SAVEPOINT isolate");
    try {
      await this.copy(client, copySql, rows, from, to);
      await client.query("RELEASE SAVEPOINT isolate");
      return;
    } catch (err) {
      if (!isRowError(err)) throw err;
      await client.query("ROLLBACK TO SAVEPOINT isolate");
      await client.query("RELEASE SAVEPOINT isolate");
      const line = failingLine(err);
      if (to - from === 1) {
        failures.push({ row: from, code: err.code ?? "", message: err.message });
        return;
      }
      if (line !== null && line >= 1 && line <= to - from) {
        const bad = from + line - 1;
        failures.push({ row: bad, code: err.code ?? "", message: err.message });
        await this.isolate(client, copySql, rows, from, bad, failures);
        await this.isolate(client, copySql, rows, bad + 1, to, failures);
      } else {
        const mid = from + ((to - from) >> 1);
        await this.isolate(client, copySql, rows, from, mid, failures);
        await this.isolate(client, copySql, rows, mid, to, failures);
      }
    }
  }

  private copy(client: pg.Client, copySql: string, rows: string[], from: number, to: number): Promise<void> {
    const payload = Buffer.from(from === 0 && to === rows.length ? rows.join("") : rows.slice(from, to).join(""), "utf8");
    return new Promise((resolve, reject) => {
      const stream = client.query(copyFrom(copySql));
      stream.on("error", reject);
      stream.on("finish", resolve);
      stream.end(payload);
    });
  }

  private fail(err: unknown): Error {
    if (isRowError(err)) return err as Error;
    // Anything but a row error leaves the connection's state unknown: start over on a fresh one.
    const client = this.client;
    this.client = null;
    client?.end().catch(() => undefined);
    return err instanceof DatabaseUnavailable ? err : new DatabaseUnavailable(err);
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    if (!this.connecting) {
      this.connecting = (async () => {
        const client = new pg.Client({
          connectionString: this.options.connectionString,
          application_name: this.options.applicationName,
          connectionTimeoutMillis: 2000,
          keepAlive: true,
        });
        client.on("error", () => {
          if (this.client === client) this.client = null;
        });
        client.on("end", () => {
          if (this.client === client) this.client = null;
        });
        try {
          await client.connect();
        } catch (err) {
          client.end().catch(() => undefined);
          throw new DatabaseUnavailable(err);
        }
        this.client = client;
        return client;
      })().finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }
}

import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";

/**
 * One worker's PostgreSQL connection and the statements group commit runs on it. Row isolation lives
 * here: when PostgreSQL refuses a row inside a COPY, the COPY is retried inside a savepoint without that
 * row (PostgreSQL names the failing input line; without a line number the rows are bisected).
 */

export interface RowFailure {
  row: number;
  code: string;
  message: string;
}

/** PostgreSQL refused the data of a row (data exception, integrity violation, program limit). */
export function isRowError(err: unknown): err is pg.DatabaseError {
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
  /** Statements run once on every new connection. */
  setup?: readonly string[];
}

export class CopyWriter {
  private client: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;

  constructor(private readonly options: CopyWriterOptions) {}

  async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    if (!this.connecting) {
      this.connecting = this.connect().finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  /** Streams `payload` (COPY text rows) through one COPY statement. */
  copy(client: pg.Client, copySql: string, payload: string): Promise<void> {
    const buffer = Buffer.from(payload, "utf8");
    return new Promise((resolve, reject) => {
      const stream = client.query(copyFrom(copySql));
      stream.on("error", reject);
      stream.on("finish", resolve);
      stream.end(buffer);
    });
  }

  /**
   * COPY `rows` inside savepoints, leaving out each row PostgreSQL refuses. Appends the refused rows to
   * `failures`; everything else is written when this resolves. Must run inside a transaction.
   */
  async copyIsolating(
    client: pg.Client,
    copySql: string,
    rows: readonly string[],
    from: number,
    to: number,
    failures: RowFailure[],
  ): Promise<void> {
    if (from >= to) return;
    await client.query("SAVEPOINT isolate");
    try {
      await this.copy(client, copySql, join(rows, from, to));
      await client.query("RELEASE SAVEPOINT isolate");
      return;
    } catch (err) {
      if (!isRowError(err)) throw err;
      await client.query("ROLLBACK TO SAVEPOINT isolate");
      await client.query("RELEASE SAVEPOINT isolate");
      if (to - from === 1) {
        failures.push({ row: from, code: err.code ?? "", message: err.message });
        return;
      }
      const line = failingLine(err);
      if (line !== null && line >= 1 && line <= to - from) {
        const bad = from + line - 1;
        failures.push({ row: bad, code: err.code ?? "", message: err.message });
        await this.copyIsolating(client, copySql, rows, from, bad, failures);
        await this.copyIsolating(client, copySql, rows, bad + 1, to, failures);
      } else {
        const mid = from + ((to - from) >> 1);
        await this.copyIsolating(client, copySql, rows, from, mid, failures);
        await this.copyIsolating(client, copySql, rows, mid, to, failures);
      }
    }
  }

  /** After anything but a row error the connection's state is unknown: drop it and start over. */
  reset(): void {
    const client = this.client;
    this.client = null;
    client?.end().catch(() => undefined);
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    if (client) await client.end().catch(() => undefined);
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.options.connectionString,
      application_name: this.options.applicationName,
      connectionTimeoutMillis: 2000,
      keepAlive: true,
      // A commit that hangs (a stuck server, a lock) must end as a failure the producer hears about,
      // never as a request waiting forever with its ring space held.
      statement_timeout: 60_000,
    });
    const forget = () => {
      if (this.client === client) this.client = null;
    };
    client.on("error", forget);
    client.on("end", forget);
    try {
      await client.connect();
      for (const statement of this.options.setup ?? []) await client.query(statement);
    } catch (err) {
      client.end().catch(() => undefined);
      throw new DatabaseUnavailable(err);
    }
    this.client = client;
    return client;
  }
}

export function join(rows: readonly string[], from: number, to: number): string {
  if (from === 0 && to === rows.length) return rows.join("");
  let s = "";
  for (let i = from; i < to; i++) s += rows[i];
  return s;
}

import pg from "pg";
import type { RowSource } from "../records/copy-rows";
import { copyIn } from "./copy-in";

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

/** The connection's protocol stream: pg emits every backend message on it once a "message" listener exists. */
interface PgConnection {
  on(event: "message", listener: () => void): void;
  stream: { destroy(): void };
}

export interface CopyWriterOptions {
  connectionString: string;
  applicationName: string;
  /** Statements run once on every new connection. */
  setup?: readonly string[];
  /**
   * Client-side bound on waiting for PostgreSQL: work that gets no message from the server for this long
   * fails as DatabaseUnavailable and the connection is dropped. statement_timeout cannot do this: the
   * server enforces it, and the server is what hangs (SIGSTOP, a black-holed network, a lock).
   */
  stallTimeoutMs: number;
}

export class CopyWriter {
  private client: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;
  /** performance.now() of the last message PostgreSQL sent on the current connection. */
  private lastAnswerAt = 0;

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

  /**
   * Runs `work` on `client` under the stall watchdog. A stall rejects at once and destroys the socket, so
   * the statements still outstanding fail too; the work may have committed anyway (COMMIT sent, answer
   * lost), which only turns an acknowledgement into a refusal the producer retries, never the reverse.
   */
  watched<T>(client: pg.Client, work: () => Promise<T>): Promise<T> {
    const stallMs = this.options.stallTimeoutMs;
    const startedAt = performance.now();
    return new Promise<T>((resolve, reject) => {
      const timer = setInterval(
        () => {
          const silentMs = performance.now() - Math.max(this.lastAnswerAt, startedAt);
          if (silentMs < stallMs) return;
          clearInterval(timer);
          this.destroy(client);
          reject(new DatabaseUnavailable(new Error(`PostgreSQL did not answer for ${Math.round(silentMs)} ms`)));
        },
        Math.min(250, Math.max(10, stallMs >> 2)),
      );
      work().then(
        (value) => {
          clearInterval(timer);
          resolve(value);
        },
        (err) => {
          clearInterval(timer);
          reject(err);
        },
      );
    });
  }

  /** Streams COPY text rows `[from, to)` through one COPY statement. */
  copy(client: pg.Client, copySql: string, rows: RowSource, from = 0, to = rows.length): Promise<void> {
    return copyIn(client, copySql, [rows.payload(from, to)]);
  }

  /**
   * COPY `rows` inside savepoints, leaving out each row PostgreSQL refuses. Appends the refused rows to
   * `failures`; everything else is written when this resolves. Must run inside a transaction.
   */
  async copyIsolating(
    client: pg.Client,
    copySql: string,
    rows: RowSource,
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

  /** Drops a connection that stopped answering: end() would wait for a server that may never reply. */
  private destroy(client: pg.Client): void {
    if (this.client === client) this.client = null;
    (client as unknown as { connection: PgConnection }).connection.stream.destroy();
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
      // The server's own bound on a statement that runs but never ends; one that hangs silently is the
      // stall watchdog's (watched()).
      statement_timeout: 60_000,
    });
    const forget = () => {
      if (this.client === client) this.client = null;
    };
    client.on("error", forget);
    client.on("end", forget);
    (client as unknown as { connection: PgConnection }).connection.on("message", () => {
      if (this.client === client) this.lastAnswerAt = performance.now();
    });
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

/**
 * `pending` and `failed` rows of `ingest_batches`, written by the front thread so that every daemon on the
 * database answers a status query alike (docs/storage.md#batch-status-across-daemons). Rows that arrive
 * while a write is in flight go together in the next one: one INSERT per flush, never one per request or
 * per event, and none at all for requests nobody can poll before their answer.
 */
import type { Database } from "./database";

export interface BatchStateRow {
  batchId: string;
  requestId: string;
  stream: string;
  status: "pending" | "failed";
  /** ISO time the request arrived. */
  createdAt: string;
  message: string | null;
}

/** Rows per INSERT; more wait for the next one. */
const MAX_ROWS_PER_WRITE = 1000;
/** `failed` rows kept for a retry while the database is unreachable; the oldest are forgotten first. */
const MAX_RETAINED = 10_000;
const RETRY_MS = 1000;

interface Queued {
  row: BatchStateRow;
  done: (stored: boolean) => void;
}

export class BatchStateWriter {
  private queue: Queued[] = [];
  private writing: Promise<void> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly db: Database,
    private readonly table: string,
    private readonly daemon: string,
    private readonly onError: (err: Error, rows: number) => void,
  ) {}

  /** Resolves true once the row is committed, false when it could not be (it is then retried if `failed`). */
  write(row: BatchStateRow): Promise<boolean> {
    return new Promise((done) => {
      this.queue.push({ row, done });
      this.kick();
    });
  }

  /** Waits for the rows queued so far (one attempt each), then stops retrying. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.wake?.();
    while (this.writing) await this.writing;
  }

  private kick(): void {
    if (this.writing || this.queue.length === 0) return;
    this.writing = this.drain().finally(() => {
      this.writing = null;
      this.kick();
    });
  }

  private async drain(): Promise<void> {
    const batch = this.queue.splice(0, MAX_ROWS_PER_WRITE);
    const rows = batch.map((q) => q.row);
    try {
      await this.db.pool.query(
        `INSERT INTO ${this.table} ("batch_id", "request_id", "stream", "status", "received", "accepted", "rejected",
           "duplicates", "created_at", "committed_at", "message", "daemon")
         SELECT b, r, s, st, 0, 0, 0, 0, c, now(), m, $7
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) AS u(b, r, s, st, c, m)`,
        [
          rows.map((r) => r.batchId),
          rows.map((r) => r.requestId),
          rows.map((r) => r.stream),
          rows.map((r) => r.status),
          rows.map((r) => r.createdAt),
          rows.map((r) => r.message),
          this.daemon,
        ],
      );
      for (const q of batch) q.done(true);
    } catch (err) {
      this.onError(err as Error, rows.length);
      // A pending row matters only until the outcome; a failed row is the outcome, so it is kept for later.
      const retained = batch.filter((q) => q.row.status === "failed");
      for (const q of batch) q.done(false);
      if (this.closed || retained.length === 0) return;
      this.queue.unshift(...retained.map((q) => ({ row: q.row, done: () => undefined })));
      this.queue.splice(0, Math.max(0, this.queue.length - MAX_RETAINED));
      await new Promise<void>((r) => {
        this.wake = r;
        this.retryTimer = setTimeout(r, RETRY_MS);
        this.retryTimer.unref();
      });
      this.wake = null;
    }
  }
}

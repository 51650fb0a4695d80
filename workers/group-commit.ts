import { now } from "../src/clock";
import { CopyWriter, DatabaseUnavailable, type RowFailure } from "./copy-writer";

/**
 * Group commit: rows of many tasks share one COPY. A batch is sealed when it reaches `batchSize` rows,
 * `maxBatchBytes`, or `batchTimeoutMs` of age; sealed batches run one at a time on the worker's single
 * connection, higher priority first. A task's rows always sit in one batch, so its outcome is settled by
 * exactly one commit.
 */

export interface GroupCommitOptions {
  batchSize: number;
  maxBatchBytes: number;
  batchTimeoutMs: number;
}

export interface CommitResult {
  /** Row positions (within the task) that PostgreSQL refused, with its message. */
  failures: RowFailure[];
  committedAt: number;
  copyMs: number;
}

interface Member {
  firstRow: number;
  rowCount: number;
  resolve: (result: CommitResult) => void;
  reject: (err: Error) => void;
}

class Batch {
  rows: string[] = [];
  bytes = 0;
  members: Member[] = [];
  timer: NodeJS.Timeout | null = null;
  constructor(
    readonly copySql: string,
    readonly priority: number,
    readonly createdAt: number,
  ) {}
}

export class GroupCommitter {
  /** Open batch per (COPY statement, priority). */
  private open = new Map<string, Batch>();
  private sealed: Batch[] = [];
  private running = false;
  private closing = false;

  constructor(
    private readonly writer: CopyWriter,
    private readonly options: GroupCommitOptions,
  ) {}

  /** Queues the task's encoded rows; resolves once they are committed (or refused row by row). */
  add(copySql: string, priority: number, rows: string[], bytes: number): Promise<CommitResult> {
    const key = priority === 0 ? copySql : `${priority}\u0000${copySql}`;
    let batch = this.open.get(key);
    if (!batch) {
      batch = new Batch(copySql, priority, now());
      this.open.set(key, batch);
      const opened = batch;
      opened.timer = setTimeout(() => this.seal(key, opened), this.options.batchTimeoutMs);
    }
    const member = { firstRow: batch.rows.length, rowCount: rows.length } as Member;
    const done = new Promise<CommitResult>((resolve, reject) => {
      member.resolve = resolve;
      member.reject = reject;
    });
    for (let i = 0; i < rows.length; i++) batch.rows.push(rows[i]);
    batch.bytes += bytes;
    batch.members.push(member);
    if (batch.rows.length >= this.options.batchSize || batch.bytes >= this.options.maxBatchBytes || this.closing) {
      this.seal(key, batch);
    }
    return done;
  }

  /** Seals every open batch now (shutdown) and resolves when all are committed. */
  async flush(): Promise<void> {
    this.closing = true;
    for (const [key, batch] of this.open) this.seal(key, batch);
    while (this.running || this.sealed.length > 0) await new Promise((r) => setTimeout(r, 2));
  }

  private seal(key: string, batch: Batch): void {
    if (this.open.get(key) !== batch) return;
    this.open.delete(key);
    if (batch.timer !== null) clearTimeout(batch.timer);
    let i = this.sealed.length;
    while (i > 0 && this.sealed[i - 1].priority < batch.priority) i--;
    this.sealed.splice(i, 0, batch);
    if (!this.running) void this.run();
  }

  private async run(): Promise<void> {
    this.running = true;
    while (this.sealed.length > 0) {
      const batch = this.sealed.shift()!;
      await this.commit(batch);
    }
    this.running = false;
  }

  private async commit(batch: Batch): Promise<void> {
    const started = now();
    let failures: RowFailure[];
    try {
      failures = await this.writer.copyRows(batch.copySql, batch.rows);
    } catch (err) {
      const error = err instanceof DatabaseUnavailable ? err : new DatabaseUnavailable(err);
      for (const m of batch.members) m.reject(error);
      return;
    }
    const committedAt = now();
    const copyMs = committedAt - started;
    failures.sort((a, b) => a.row - b.row);
    let f = 0;
    for (const m of batch.members) {
      const mine: RowFailure[] = [];
      const end = m.firstRow + m.rowCount;
      while (f < failures.length && failures[f].row < end) {
        const failure = failures[f++];
        mine.push({ ...failure, row: failure.row - m.firstRow });
      }
      m.resolve({ failures: mine, committedAt, copyMs });
    }
  }
}

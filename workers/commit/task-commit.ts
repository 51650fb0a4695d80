/**
 * A task's share of group commit: its rows per commit target, and the bookkeeping rows (its ingest_batches
 * row, a dead letter per rejected record) that commit in the same transaction.
 */
import type { IngestOutcome, IngestTask, RecordError, WorkerData } from "../../src/shared/task-protocol";
import type { ValidatedRecords } from "../records/validate";
import { batchRow, deadLetterRow, rawText } from "./bookkeeping-rows";
import { batchesCopySql, deadLettersCopySql, markReplayedSql, type CommitTarget } from "./commit-targets";
import { CopyWriter } from "./copy-writer";
import { GroupCommitter, type PartOutcome, type PartWork, type TaskWork } from "./group-commit";
import { producerSql, type SessionMark } from "./producer-seqs";
import { tallyTask, type TaskTally } from "./task-outcome";

/** The worker's group committer on its own PostgreSQL connection. */
export function workerCommitter(data: WorkerData, applicationName: string): GroupCommitter {
  return new GroupCommitter(
    new CopyWriter({ connectionString: data.connectionString, applicationName, stallTimeoutMs: data.stallTimeoutMs }),
    {
      batchSize: data.batchSize,
      batchTimeoutMs: data.batchTimeoutMs,
      maxBatchBytes: data.maxBatchBytes,
      batchesCopySql: batchesCopySql(data.dbSchema),
      deadLettersCopySql: deadLettersCopySql(data.dbSchema),
      markReplayedSql: markReplayedSql(data.dbSchema),
      gauges: new Int32Array(data.commitGauges),
      producers: producerSql(data.dbSchema),
    },
  );
}

/** A validated task as group-commit work. */
export class TaskCommit implements TaskWork {
  readonly priority: number;
  readonly parts: PartWork[];
  readonly bytes: number;
  /** Set for a producer session's frame. */
  session: SessionMark | null = null;
  readonly replayOf: readonly string[] | undefined;
  /** The producer-facing batch_id its bookkeeping rows carry. */
  private readonly batchId: string;
  /** The latest transaction's tally, with the outcomes it was made from. */
  private finalized: { outcomes: PartOutcome[]; tally: TaskTally } | null = null;

  /**
   * `answer` gives the batch_id and priority (the envelope's, else the task's); `recordAt` reads a refused
   * row's record again from the body text.
   */
  constructor(
    targets: readonly CommitTarget[],
    private readonly task: IngestTask,
    answer: Pick<IngestOutcome, "batchId" | "priority">,
    private readonly receivedAt: string,
    private readonly records: ValidatedRecords,
    private readonly recordAt: (index: number) => unknown,
  ) {
    this.priority = answer.priority;
    this.batchId = answer.batchId;
    this.parts = records.parts.map((p) => ({ target: targets[p.stream.order], rows: p.rows, keys: p.keys }));
    this.bytes = records.rowBytes;
    this.replayOf = task.replayOf;
  }

  /** Runs in the transaction, again if the batch is retried with row isolation. */
  finalize(outcomes: PartOutcome[]): { batchRow: string | null; deadLetters: string[] } {
    const tally = tallyTask(this.records, outcomes, this.recordAt);
    this.finalized = { outcomes, tally };
    const { task, batchId, receivedAt } = this;
    const deadLetters = tally.rejections.map((r) =>
      deadLetterRow({
        stream: r.stream ?? task.stream,
        source: task.source,
        batchId,
        index: r.index,
        line: r.line ?? null,
        raw: rawText(r.raw),
        errors: r.errors,
        receivedAt,
      }),
    );
    const row = task.recordBatch
      ? batchRow({
          batchId,
          requestId: task.requestId,
          stream: task.stream,
          received: this.records.received,
          accepted: tally.accepted,
          rejected: tally.rejections.length,
          duplicates: tally.duplicates,
          createdAt: receivedAt,
        })
      : null;
    return { batchRow: row, deadLetters };
  }

  /** The tally of these outcomes: the committed transaction's finalize already made it. */
  tally(outcomes: PartOutcome[]): TaskTally {
    const done = this.finalized;
    return done !== null && done.outcomes === outcomes ? done.tally : tallyTask(this.records, outcomes, this.recordAt);
  }
}

/** Keeps the batch status and dead letter of a body that could not be read at all. */
export async function recordUnreadableBody(
  committer: GroupCommitter,
  task: IngestTask,
  batchId: string,
  raw: string,
  error: RecordError,
  receivedAt: string,
): Promise<void> {
  const stream = task.stream;
  try {
    await committer.add({
      priority: task.priority,
      parts: [],
      bytes: 0,
      replayOf: task.replayOf,
      finalize: () => ({
        batchRow: batchRow({
          batchId,
          requestId: task.requestId,
          stream,
          received: 0,
          accepted: 0,
          rejected: 1,
          duplicates: 0,
          createdAt: receivedAt,
        }),
        deadLetters: [deadLetterRow({ stream, source: task.source, batchId, index: null, line: null, raw, errors: [error], receivedAt })],
      }),
    });
  } catch {
    // The 400 answer does not depend on the database; only the dead letter is lost.
  }
}

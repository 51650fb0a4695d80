/**
 * What crosses between the front thread and the worker pool. Only these small descriptors and outcomes are
 * structured-cloned; the body bytes stay in the shared ring at [offset, offset + length).
 */

/** What every worker thread is started with (Piscina workerData). */
export interface WorkerData {
  ring: SharedArrayBuffer;
  connectionString: string;
  dbSchema: string;
  batchSize: number;
  batchTimeoutMs: number;
  maxBatchBytes: number;
  /** OVERLOAD_DEADLINE_MS: how long a commit may go without a word from PostgreSQL before it is given up. */
  stallTimeoutMs: number;
  maxErrorsReported: number;
  /** Streams whose records are deduplicated by their dedupKey. */
  dedupStreams: string[];
  /** COMMIT_GAUGE_SLOTS Int32 counters shared with the front (metrics). */
  commitGauges: SharedArrayBuffer;
}

export type TaskFormat = "json" | "ndjson" | "text" | "auto";

export interface IngestTask {
  stream: string;
  format: TaskFormat;
  /** Body is the `{events, batch_id?, priority?}` envelope of POST /v1/ingest/batch. */
  envelope: boolean;
  offset: number;
  length: number;
  /**
   * This request's or frame's own id (a UUID per HTTP request): the key of its ingest_batches row. The
   * producer-facing batch_id is the outcome's `batchId` (the envelope's own batch_id when it names one).
   */
  requestId: string;
  priority: number;
  /** clock.now() when the request or frame arrived. */
  receivedAt: number;
  /** clock.now() when its last byte was in the ring. */
  ringAt: number;
  /** Where it came from, kept with dead letters (`http`, `ws`). */
  source: string;
  /** Keep the outcome in ingest_batches for status queries (HTTP requests; not WebSocket frames). */
  recordBatch: boolean;
}

export interface RecordError {
  /** Position of the record in the request (array index or line number minus one). */
  index: number;
  /** Field path inside the record, `$` for the record itself. */
  path: string;
  expected: string;
  message: string;
  /** 1-based line number, for line formats. */
  line?: number;
  /** Line formats: the entity the line was routed to (`Order`), when its prefix was known. */
  entity?: string;
  /** Line formats: the line's text (cut at 1,000 characters). */
  text?: string;
}

export type OutcomeKind =
  /** Records were validated and every valid one is committed. */
  | "done"
  /** The body as a whole cannot be read (malformed JSON, invalid UTF-8, bad envelope): nothing stored. */
  | "unparseable"
  /** PostgreSQL could not be reached or failed the commit: nothing from this task is acknowledged. */
  | "db_unavailable"
  /** The worker failed unexpectedly (a bug): nothing from this task is acknowledged. */
  | "failed";

export interface IngestOutcome {
  kind: OutcomeKind;
  /** The batch_id answered to the producer: the envelope's own batch_id, else the request id. */
  batchId: string;
  priority: number;
  received: number;
  accepted: number;
  rejected: number;
  duplicates: number;
  errors: RecordError[];
  errorsTruncated: boolean;
  message: string;
  /** Entity and id of the first stored record (for single-line endpoints). */
  first: { entity: string; id: unknown } | null;
  /** clock.now() stamps for the latency stages. */
  validatedAt: number;
  committedAt: number;
  copyMs: number;
}

/** An outcome with nothing stored yet: the start of every task's answer, and the whole of a failed one. */
export function emptyOutcome(
  task: Pick<IngestTask, "requestId" | "priority">,
  kind: OutcomeKind,
  message: string,
  validatedAt = 0,
): IngestOutcome {
  return {
    kind,
    batchId: task.requestId,
    priority: task.priority,
    received: 0,
    accepted: 0,
    rejected: 0,
    duplicates: 0,
    errors: [],
    errorsTruncated: false,
    message,
    first: null,
    validatedAt,
    committedAt: 0,
    copyMs: 0,
  };
}

/**
 * Workers announce `[requestId, producerBatchId]` on this BroadcastChannel as soon as they parse an envelope
 * naming its own batch_id: the front thread never parses bodies, yet a producer polls by its own id.
 */
export const BATCH_ALIAS_CHANNEL = "ingestd.batch-aliases";

/**
 * Slots of the Int32Array over `WorkerData.commitGauges`: every worker adds and subtracts its own tasks with
 * Atomics, so each slot is the sum over workers. WAITING: tasks whose rows sit in a group-commit batch not
 * yet started; COMMITTING: tasks in the transaction under way.
 */
export const COMMIT_GAUGE_WAITING = 0;
export const COMMIT_GAUGE_COMMITTING = 1;
export const COMMIT_GAUGE_SLOTS = 2;

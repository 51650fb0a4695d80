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
  /** MAX_BODY_MB in bytes: a compressed body inflating past it is refused (413) as soon as it does. */
  maxBodyBytes: number;
  /** Streams whose records are deduplicated by their dedupKey. */
  dedupStreams: string[];
  /** COMMIT_GAUGE_SLOTS Int32 counters shared with the front (metrics). */
  commitGauges: SharedArrayBuffer;
  /** The publication of the id-state filters each worker has taken (src/shared/filter-readers.ts). */
  filterReaders: SharedArrayBuffer;
  /** Streams that drop unknown fields instead of refusing the record (docs/streams.md#unknown-fields). */
  ignoreUnknownStreams: string[];
}

export type TaskFormat = "json" | "ndjson" | "text" | "auto";

/** A body's Content-Encoding: the ring holds it as sent; the worker inflates it (docs/http-api.md#compressed-bodies). */
export type BodyEncoding = "identity" | "gzip" | "deflate" | "br";

export interface IngestTask {
  stream: string;
  format: TaskFormat;
  encoding: BodyEncoding;
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
  /** Report what became of each record (`IngestOutcome.records`), with every error listed (per-line progress). */
  recordOutcomes?: boolean;
  /**
   * Dead-letter ids this body replays: marked replayed in the transaction that commits the body, so a replay
   * is stored once or not at all (docs/http-api.md#replaying-dead-letters).
   */
  replayOf?: string[];
}

/** One frame of a producer session, in the ring at [offset, offset + length) (length 0: an empty frame). */
export interface SessionFrame {
  seq: number;
  offset: number;
  length: number;
  receivedAt: number;
  ringAt: number;
}

/**
 * Consecutive frames of one producer session, run by one worker and committed in seq order
 * (docs/websocket-protocol.md#producer-sessions): each commit records the session's last committed seq in
 * its own transaction, and only while `epoch` is still the session's (a newer session fences this one).
 */
export interface SessionTask {
  stream: string;
  format: TaskFormat;
  producer: string;
  epoch: number;
  frames: SessionFrame[];
  source: string;
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

export interface EntityCount {
  entity: string;
  /** Stored plus duplicates. */
  processed: number;
}

export const RECORD_STORED = 0;
export const RECORD_DUPLICATE = 1;
export const RECORD_REJECTED = 2;

/** What became of each record of a task, in two byte arrays rather than an object per record. */
export interface RecordOutcomes {
  /** Names that `entity` codes refer to. */
  entities: string[];
  /** Per record: 1 + its index in `entities`; 0 when no stream took it (an unknown line prefix). */
  entity: Uint8Array;
  /** Per record: RECORD_STORED, RECORD_DUPLICATE or RECORD_REJECTED (its errors are in `errors`, by index). */
  status: Uint8Array;
}

export type OutcomeKind =
  /** Records were validated and every valid one is committed. */
  | "done"
  /** The body as a whole cannot be read (malformed JSON, invalid UTF-8, bad envelope, bad compression): nothing stored. */
  | "unparseable"
  /** The body inflates past MAX_BODY_MB: nothing stored, inflating stopped there. */
  | "too_large"
  /** PostgreSQL could not be reached or failed the commit: nothing from this task is acknowledged. */
  | "db_unavailable"
  /** The worker failed unexpectedly (a bug): nothing from this task is acknowledged. */
  | "failed"
  /** A producer session's frame refused because a newer session of the same producer fenced this one: nothing stored. */
  | "superseded";

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
  /**
   * Records stored or found duplicate, per entity (a line stream's `entity`, else the stream's name): one
   * entry per stream the task's rows went to, usually one.
   */
  byEntity: EntityCount[];
  /** Tasks with `recordOutcomes`: each record's entity and status, by record index; null otherwise. */
  records: RecordOutcomes | null;
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
    byEntity: [],
    records: null,
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
 * The front thread publishes the filters of the sealed id-state generations on this BroadcastChannel
 * after each maintenance pass: every filter it holds, each in a SharedArrayBuffer, so the workers check one
 * copy per process instead of loading their own (docs/storage.md#deduplication).
 */
export const DEDUP_FILTERS_CHANNEL = "ingestd.dedup-filters";

/**
 * What a worker posts on DEDUP_FILTERS_CHANNEL when it starts: a BroadcastChannel keeps nothing for a thread
 * that subscribes later, and until its first publication a worker probes every sealed generation with every
 * id, so the front answers with what it holds at once instead of at its next pass.
 */
export const DEDUP_FILTERS_WANTED = "filters-wanted";

/**
 * One published filter: the stream's qualified slots table, the generations whose keys it holds (one, or a
 * group), the filter's words.
 */
export interface PublishedFilter {
  slots: string;
  gens: number[];
  words: SharedArrayBuffer;
}

/**
 * What the front posts on DEDUP_FILTERS_CHANNEL: every filter it holds, numbered from 1 so that a worker can
 * say which it has taken (src/shared/filter-readers.ts).
 */
export interface FilterPublication {
  seq: number;
  filters: PublishedFilter[];
}

/**
 * Slots of the Int32Array over `WorkerData.commitGauges`: every worker adds and subtracts its own tasks with
 * Atomics, so each slot is the sum over workers. WAITING: tasks whose rows sit in a group-commit batch not
 * yet started; COMMITTING: tasks in the transaction under way. ONE_TRIP and LONG count the group-commit
 * transactions committed by each path (workers/commit/group-commit.ts), wrapping at 2^32: read as Uint32,
 * differences taken modulo 2^32.
 */
export const COMMIT_GAUGE_WAITING = 0;
export const COMMIT_GAUGE_COMMITTING = 1;
export const COMMIT_GAUGE_ONE_TRIP = 2;
export const COMMIT_GAUGE_LONG = 3;
export const COMMIT_GAUGE_SLOTS = 4;

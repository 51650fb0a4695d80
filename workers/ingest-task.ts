/**
 * Piscina entry: runs inside each pool thread. Reads a task's body from the shared ring, parses it, sorts its
 * records into COPY rows and rejections (records/), and group-commits the rows with the task's bookkeeping
 * rows (commit/). The task resolves only after PostgreSQL committed: the front thread acknowledges on that.
 */
import { BroadcastChannel, threadId, workerData } from "node:worker_threads";
import { streams } from "../config/streams";
import { now } from "../src/shared/clock";
import { FilterReaders } from "../src/shared/filter-readers";
import { LINE_ROUTER } from "../src/shared/stream-definition";
import {
  BATCH_ALIAS_CHANNEL,
  emptyOutcome,
  type IngestOutcome,
  type IngestTask,
  type RecordError,
  type SessionFrame,
  type SessionTask,
  type WorkerData,
} from "../src/shared/task-protocol";
import { decodeBody, parseBody, recordReader, UnparseableBody, type ParsedBody } from "./records/body-parser";
import { compileStreams } from "./records/compiled-streams";
import { BadCompression, BodyTooLarge, inflateBody } from "./records/inflate";
import { validateRecords } from "./records/validate";
import { commitTargets } from "./commit/commit-targets";
import { followPublishedFilters } from "./commit/id-filters";
import { DatabaseUnavailable } from "./commit/copy-writer";
import type { CommitResult, PartOutcome, TaskWork } from "./commit/group-commit";
import type { SessionMark } from "./commit/producer-seqs";
import { recordUnreadableBody, TaskCommit, workerCommitter } from "./commit/task-commit";
import { recordOutcomes, reportTally } from "./commit/task-outcome";

const data = workerData as WorkerData;
const ring = new Uint8Array(data.ring);
const lenientUtf8 = new TextDecoder("utf-8");
const aliases = new BroadcastChannel(BATCH_ALIAS_CHANNEL);
(aliases as unknown as { unref(): void }).unref();
const streamTable = compileStreams(streams, data.dbSchema, data.dedupStreams, data.ignoreUnknownStreams);
const targets = commitTargets(data.dbSchema, streams, data.dedupStreams);
followPublishedFilters(
  targets.flatMap((t) => (t.dedup ? [t.dedup.filters] : [])),
  new FilterReaders(data.filterReaders),
);
const committer = workerCommitter(data, `ingestd-worker-${threadId}`);

export default async function ingest(task: IngestTask): Promise<IngestOutcome> {
  // null: a line-router task, whose lines each go to the stream their prefix names.
  const single = task.stream === LINE_ROUTER ? null : streamTable.byName.get(task.stream);
  if (single === undefined) return emptyOutcome(task, "unparseable", `unknown stream ${task.stream}`, now());
  const receivedAt = new Date(task.receivedAt).toISOString();
  const bytes = ring.subarray(task.offset, task.offset + task.length);

  let body: ParsedBody | null;
  /** The body as sent, or inflated when it came compressed. */
  let plain: Uint8Array = bytes;
  try {
    plain = inflateBody(bytes, task.encoding, data.maxBodyBytes);
    body = parseBody(decodeBody(plain), task.format, task.envelope);
  } catch (err) {
    return refuseUnreadableBody(task, plain, err, receivedAt);
  }

  const result = emptyOutcome(task, "done", "", now());
  adoptEnvelope(task, body, result);
  // Neither the parsed records nor the body's text are kept while the commit is awaited (a batch waits for
  // hundreds of ms, long enough for the garbage collector to copy and promote every object of it): validation
  // takes out what the answer needs, and the rare record PostgreSQL refuses is parsed again from the body's
  // bytes, which stay in the ring until the task settles (docs/architecture.md#worker-threads).
  const records = validateRecords(body, single, streamTable, { receivedAt });
  body = null;
  result.received = records.received;
  result.validatedAt = now();

  const work = new TaskCommit(targets, task, result, receivedAt, records, recordReader(plain, task.format, task.envelope));
  let outcomes: PartOutcome[];
  try {
    const committed = await committer.add(work);
    outcomes = committed.outcomes;
    result.committedAt = committed.committedAt;
    result.copyMs = committed.copyMs;
  } catch (err) {
    if (!(err instanceof DatabaseUnavailable)) throw err;
    if (records.parts.length > 0) return { ...emptyOutcome(task, "db_unavailable", err.message, now()), received: records.received };
    // Nothing to store: the validation answer stands; only its bookkeeping rows were lost.
    outcomes = [];
    result.committedAt = now();
  }
  const tally = work.tally(outcomes);
  // Per-record outcomes list every error: each line's event carries its own message.
  reportTally(result, tally, task.recordOutcomes ? Infinity : data.maxErrorsReported);
  if (task.recordOutcomes) result.records = recordOutcomes(records, outcomes, tally);
  return result;
}

/**
 * An envelope's own batch_id replaces the task's (the front thread learns it for status queries); its
 * priority counts when higher than the one named outside the body (docs/architecture.md#priority).
 */
function adoptEnvelope(task: IngestTask, body: ParsedBody, result: IngestOutcome): void {
  if (body.batchId !== undefined) {
    result.batchId = body.batchId;
    if (task.recordBatch) aliases.postMessage([task.requestId, body.batchId]);
  }
  if (body.priority !== undefined && body.priority > result.priority) result.priority = body.priority;
}

/**
 * The answer to a body that cannot be read at all; its batch status and dead letter are kept when the task
 * keeps one. A compressed body that could not be inflated is described in its dead letter, not copied.
 */
async function refuseUnreadableBody(task: IngestTask, bytes: Uint8Array, err: unknown, receivedAt: string): Promise<IngestOutcome> {
  const known = err instanceof UnparseableBody || err instanceof BodyTooLarge || err instanceof BadCompression;
  const message = known ? (err as Error).message : `cannot read body: ${(err as Error).message}`;
  const result = emptyOutcome(task, err instanceof BodyTooLarge ? "too_large" : "unparseable", message, now());
  if (task.recordBatch) {
    const error: RecordError = { index: 0, path: "$", expected: "a parseable body", message };
    const raw =
      err instanceof BodyTooLarge || err instanceof BadCompression
        ? `(${task.length} bytes of ${task.encoding} data, not inflated)`
        : lenientUtf8.decode(bytes);
    await recordUnreadableBody(committer, task, result.batchId, raw, error, receivedAt);
  }
  return result;
}

/**
 * Piscina entry `ingestSession`: consecutive frames of one producer session. Every frame, even one with
 * nothing to store, joins group commit in seq order before any of them is awaited, so they commit in seq
 * order on this worker's one connection and the session's committed seq only ever advances one frame at a
 * time (docs/websocket-protocol.md#producer-sessions). Returns each frame's outcome, in frame order.
 */
export async function ingestSession(task: SessionTask): Promise<IngestOutcome[]> {
  const single = task.stream === LINE_ROUTER ? null : streamTable.byName.get(task.stream);
  const outcomes: Array<Promise<IngestOutcome>> = [];
  for (const frame of task.frames) outcomes.push(sessionFrame(task, single, frame));
  return Promise.all(outcomes);
}

/** One frame of a session; everything before its first await runs at once, so frames join group commit in call order. */
async function sessionFrame(
  task: SessionTask,
  single: ReturnType<typeof streamTable.byName.get> | null,
  frame: SessionFrame,
): Promise<IngestOutcome> {
  const frameTask: IngestTask = {
    stream: task.stream,
    format: task.format,
    encoding: "identity",
    envelope: false,
    offset: frame.offset,
    length: frame.length,
    requestId: `ws-${task.producer}-${frame.seq}`,
    priority: 0,
    receivedAt: frame.receivedAt,
    ringAt: frame.ringAt,
    source: task.source,
    recordBatch: false,
  };
  const mark: SessionMark = { stream: task.stream, producer: task.producer, epoch: task.epoch, seq: frame.seq };
  const receivedAt = new Date(frame.receivedAt).toISOString();
  let result: IngestOutcome;
  let work: TaskCommit | null = null;
  if (single === undefined) result = emptyOutcome(frameTask, "unparseable", `unknown stream ${task.stream}`, now());
  else if (frame.length === 0) result = { ...emptyOutcome(frameTask, "done", "empty frame", now()), received: 0 };
  else {
    const bytes = ring.subarray(frame.offset, frame.offset + frame.length);
    try {
      const body = parseBody(decodeBody(bytes), task.format, false);
      result = emptyOutcome(frameTask, "done", "", now());
      const records = validateRecords(body, single, streamTable, { receivedAt });
      result.received = records.received;
      result.validatedAt = now();
      work = new TaskCommit(targets, frameTask, result, receivedAt, records, recordReader(bytes, task.format, false));
    } catch (err) {
      const message = err instanceof UnparseableBody ? err.message : `cannot read body: ${(err as Error).message}`;
      result = emptyOutcome(frameTask, "unparseable", message, now());
    }
  }
  // A frame with nothing to store still commits its seq, so the session's seq never skips a frame.
  const commit: TaskWork = work ?? {
    priority: 0,
    parts: [],
    bytes: 0,
    session: mark,
    finalize: () => ({ batchRow: null, deadLetters: [] }),
  };
  if (work !== null) work.session = mark;
  let committed: CommitResult;
  try {
    committed = await committer.add(commit);
  } catch (err) {
    if (!(err instanceof DatabaseUnavailable)) throw err;
    return { ...emptyOutcome(frameTask, "db_unavailable", err.message, now()), received: result.received };
  }
  if (committed.skipped === "superseded")
    return emptyOutcome(frameTask, "superseded", "a newer session of this producer holds the stream", now());
  if (committed.skipped === "out_of_order")
    return emptyOutcome(frameTask, "failed", `frame ${frame.seq} is not the session's next frame; reconnect`, now());
  result.committedAt = committed.committedAt;
  result.copyMs = committed.copyMs;
  // `committed`: an earlier attempt whose answer was lost stored this frame; its rows count as accepted.
  if (work !== null) reportTally(result, work.tally(committed.outcomes), data.maxErrorsReported);
  return result;
}

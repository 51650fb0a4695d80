/**
 * Piscina entry: runs inside each pool thread. Reads a task's body from the shared ring, parses it, sorts its
 * records into COPY rows and rejections (records/), and group-commits the rows with the task's bookkeeping
 * rows (commit/). The task resolves only after PostgreSQL committed: the front thread acknowledges on that.
 */
import { BroadcastChannel, threadId, workerData } from "node:worker_threads";
import { streams } from "../config/streams";
import { now } from "../src/shared/clock";
import { LINE_ROUTER } from "../src/shared/stream-definition";
import {
  BATCH_ALIAS_CHANNEL,
  emptyOutcome,
  type IngestOutcome,
  type IngestTask,
  type RecordError,
  type WorkerData,
} from "../src/shared/task-protocol";
import { decodeBody, parseBody, recordReader, UnparseableBody, type ParsedBody } from "./records/body-parser";
import { compileStreams } from "./records/compiled-streams";
import { validateRecords } from "./records/validate";
import { commitTargets } from "./commit/commit-targets";
import { DatabaseUnavailable } from "./commit/copy-writer";
import type { PartOutcome } from "./commit/group-commit";
import { recordUnreadableBody, TaskCommit, workerCommitter } from "./commit/task-commit";
import { reportTally } from "./commit/task-outcome";

const data = workerData as WorkerData;
const ring = new Uint8Array(data.ring);
const lenientUtf8 = new TextDecoder("utf-8");
const aliases = new BroadcastChannel(BATCH_ALIAS_CHANNEL);
(aliases as unknown as { unref(): void }).unref();
const streamTable = compileStreams(streams, data.dbSchema, data.dedupStreams);
const targets = commitTargets(data.dbSchema, streams, data.dedupStreams);
const committer = workerCommitter(data, `ingestd-worker-${threadId}`);

export default async function ingest(task: IngestTask): Promise<IngestOutcome> {
  // null: a line-router task, whose lines each go to the stream their prefix names.
  const single = task.stream === LINE_ROUTER ? null : streamTable.byName.get(task.stream);
  if (single === undefined) return emptyOutcome(task, "unparseable", `unknown stream ${task.stream}`, now());
  const receivedAt = new Date(task.receivedAt).toISOString();
  const bytes = ring.subarray(task.offset, task.offset + task.length);

  let text: string;
  let body: ParsedBody | null;
  try {
    text = decodeBody(bytes);
    body = parseBody(text, task.format, task.envelope);
  } catch (err) {
    return refuseUnreadableBody(task, bytes, err, receivedAt);
  }

  const result = emptyOutcome(task, "done", "", now());
  adoptEnvelope(task, body, result);
  // The parsed records are not kept while the commit is awaited (a batch waits for hundreds of ms, long
  // enough for the garbage collector to copy and promote every object of it): validation takes out what the
  // answer needs, and the rare record PostgreSQL refuses is read again from the body text.
  const records = validateRecords(body, single, streamTable, { receivedAt });
  body = null;
  result.received = records.received;
  result.validatedAt = now();

  const work = new TaskCommit(targets, task, result, receivedAt, records, recordReader(text, task.format, task.envelope));
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
  reportTally(result, work.tally(outcomes), data.maxErrorsReported);
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

/** The answer to a body that cannot be read at all; its batch status and dead letter are kept when the task keeps one. */
async function refuseUnreadableBody(task: IngestTask, bytes: Uint8Array, err: unknown, receivedAt: string): Promise<IngestOutcome> {
  const message = err instanceof UnparseableBody ? err.message : `cannot read body: ${(err as Error).message}`;
  const result = emptyOutcome(task, "unparseable", message, now());
  if (task.recordBatch) {
    const error: RecordError = { index: 0, path: "$", expected: "a parseable body", message };
    await recordUnreadableBody(committer, task, result.batchId, lenientUtf8.decode(bytes), error, receivedAt);
  }
  return result;
}

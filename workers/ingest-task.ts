/**
 * Piscina task handler: runs inside each pool thread. Reads a body from the shared ring, parses it,
 * validates each record with its stream's typia validator, encodes COPY rows and hands them to group
 * commit. The task resolves only after PostgreSQL committed: the front thread acknowledges on that.
 */
import { BroadcastChannel, threadId, workerData } from "node:worker_threads";
import { streams } from "../config/streams";
import { now } from "../src/clock";
import { LINE_ROUTER, type RowContext, type StreamDefinition } from "../src/stream-definition";
import { decodeBody, parseBody, UnparseableBody, type ParsedBody } from "./body-parser";
import { batchRow, deadLetterRow, rawText } from "./bookkeeping-rows";
import { batchesCopySql, commitTarget, deadLettersCopySql, type CommitTarget } from "./commit-targets";
import { CopyWriter, DatabaseUnavailable } from "./copy-writer";
import { GroupCommitter, type PartOutcome, type TaskWork } from "./group-commit";
import { LineFormatError } from "../src/line-fields";
import { validationErrors } from "./record-errors";
import { compileRowEncoder, EncodeError, type RowEncoder } from "./row-encoder";
import { BATCH_ALIAS_CHANNEL, emptyOutcome, type IngestOutcome, type IngestTask, type RecordError } from "./task-protocol";

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

const data = workerData as WorkerData;
const aliases = new BroadcastChannel(BATCH_ALIAS_CHANNEL);
(aliases as unknown as { unref(): void }).unref();
const ring = new Uint8Array(data.ring);
const lenientUtf8 = new TextDecoder("utf-8");

interface CompiledStream {
  definition: StreamDefinition;
  encode: RowEncoder<unknown>;
  target: CommitTarget;
  /** Deduplicating streams: a row's id and event time as the id table stores them. */
  keyOf: ((record: unknown, ctx: RowContext) => string) | null;
  timeOf: ((record: unknown, ctx: RowContext) => string) | null;
}

function rawColumn(definition: StreamDefinition, name: string | undefined): ((record: unknown, ctx: RowContext) => string) | null {
  const column = definition.columns.find((c) => c.name === name);
  if (!column) return null;
  if (column.type === "timestamptz") {
    return (record, ctx) => {
      const v = column.value(record, ctx);
      return typeof v === "number" ? new Date(v).toISOString() : String(v);
    };
  }
  return (record, ctx) => String(column.value(record, ctx));
}

const dedup = new Set(data.dedupStreams);
const compiled = new Map<string, CompiledStream>();
const byPrefix = new Map<string, CompiledStream>();
streams.forEach((definition, order) => {
  const target = commitTarget(data.dbSchema, definition, order, dedup.has(definition.name));
  const c: CompiledStream = {
    definition,
    encode: compileRowEncoder(definition),
    target,
    keyOf: target.dedup ? rawColumn(definition, definition.dedupKey) : null,
    timeOf: target.dedup?.withTime ? rawColumn(definition, definition.timeColumn) : null,
  };
  compiled.set(definition.name, c);
  if (definition.linePrefix) byPrefix.set(definition.linePrefix, c);
});
const prefixes = [...byPrefix.keys()].map((p) => `${p}|`).join(", ");

const committer = new GroupCommitter(
  new CopyWriter({
    connectionString: data.connectionString,
    applicationName: `ingestd-worker-${threadId}`,
    stallTimeoutMs: data.stallTimeoutMs,
  }),
  {
    batchSize: data.batchSize,
    batchTimeoutMs: data.batchTimeoutMs,
    maxBatchBytes: data.maxBatchBytes,
    batchesCopySql: batchesCopySql(data.dbSchema),
    deadLettersCopySql: deadLettersCopySql(data.dbSchema),
    gauges: new Int32Array(data.commitGauges),
  },
);

/** One stream's share of a task: its rows and, per row, the record it came from. */
interface Part {
  stream: CompiledStream;
  rows: string[];
  recordIndex: number[];
  /** Each row's `recordId` (streams that report one), taken before the parsed records are let go. */
  ids: unknown[] | null;
  keys: string[];
  times: string[];
}

interface Rejection {
  index: number;
  line: number | undefined;
  raw: unknown;
  errors: RecordError[];
  /** The stream a routed line belongs to (its dead letter is filed there); unset: the task's stream. */
  stream?: string;
}

/** Longest line text echoed back in an error. */
const MAX_ECHO = 1000;

function withLine(error: RecordError, line: number | undefined, entity: string | undefined, raw?: unknown): RecordError {
  if (line !== undefined) {
    error.line = line;
    if (!error.message.startsWith("line ")) error.message = `line ${line}: ${error.message}`;
    if (typeof raw === "string") error.text = raw.length > MAX_ECHO ? raw.slice(0, MAX_ECHO) : raw;
  }
  if (entity !== undefined) error.entity = entity;
  return error;
}

export default async function ingest(task: IngestTask): Promise<IngestOutcome> {
  const router = task.stream === LINE_ROUTER;
  const single = router ? null : compiled.get(task.stream);
  if (!router && !single) return emptyOutcome(task, "unparseable", `unknown stream ${task.stream}`, now());
  const receivedAt = new Date(task.receivedAt).toISOString();
  const bytes = ring.subarray(task.offset, task.offset + task.length);

  let text: string;
  let body: ParsedBody | null;
  try {
    text = decodeBody(bytes);
    body = parseBody(text, task.format, task.envelope);
  } catch (err) {
    const message = err instanceof UnparseableBody ? err.message : `cannot read body: ${(err as Error).message}`;
    const result = emptyOutcome(task, "unparseable", message, now());
    if (task.recordBatch) await recordOnly(task, result, [{ index: -1, line: undefined, raw: lenientUtf8.decode(bytes), errors: [{ index: 0, path: "$", expected: "a parseable body", message }] }], receivedAt);
    return result;
  }

  const result = emptyOutcome(task, "done", "", now());
  if (body.batchId !== undefined) {
    result.batchId = body.batchId;
    if (task.recordBatch) aliases.postMessage([task.batchId, body.batchId]);
  }
  // The task's priority may be named outside the body (README "Priority"): the higher of the two counts.
  if (body.priority !== undefined && body.priority > result.priority) result.priority = body.priority;
  // The parsed records are not kept while the commit is awaited (a batch waits for hundreds of ms, long
  // enough for the garbage collector to copy and promote every object of it): what the answer needs is
  // taken out of them here, and the rare record PostgreSQL refuses is read again from the body text.
  let values: unknown[] | null = body.values;
  const received = values.length;
  const lines = body.lines.length > 0 ? body.lines : null;
  const ctx = { receivedAt };
  const parts = new Map<CompiledStream, Part>();
  const rejections: Rejection[] = [];
  for (let k = 0; k < body.errors.length; k++) {
    const e = body.errors[k];
    rejections.push({ index: e.index, line: e.line, raw: body.errorRaw[k] ?? "", errors: [e] });
  }
  body = null;
  let encodedBytes = 0;

  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === undefined) continue; // a line that failed to parse, already reported
    const line = lines === null ? undefined : lines[i];
    let stream = single;
    if (router) {
      const text = value as string;
      const bar = text.indexOf("|");
      stream = bar > 0 ? byPrefix.get(text.slice(0, bar)) : undefined;
      if (!stream) {
        const kind = bar > 0 ? `"${text.slice(0, bar)}"` : "missing";
        rejections.push({ index: i, line, raw: value, errors: [withLine({ index: i, path: "$", expected: `a line starting with ${prefixes}`, message: `unknown record type ${kind}; expected a line starting with ${prefixes}` }, line, undefined, value)] });
        continue;
      }
    }
    const def = stream!.definition;
    let record: unknown = value;
    if (def.parseLine) {
      try {
        record = def.parseLine(value as string);
      } catch (err) {
        if (!(err instanceof LineFormatError)) throw err;
        rejections.push({ index: i, line, raw: value, stream: def.name, errors: [withLine({ index: i, path: err.path, expected: err.expected, message: err.message }, line, def.entity, value)] });
        continue;
      }
    }
    const checked = def.validate(record);
    if (!checked.success) {
      rejections.push({ index: i, line, raw: value, stream: def.name, errors: validationErrors(i, line, checked).map((e) => withLine(e, line, def.entity, value)) });
      continue;
    }
    let row: string;
    try {
      row = stream!.encode(checked.data, ctx);
    } catch (err) {
      if (!(err instanceof EncodeError)) throw err;
      rejections.push({ index: i, line, raw: value, stream: def.name, errors: [withLine({ index: i, path: err.path, expected: err.expected, message: err.message }, line, def.entity, value)] });
      continue;
    }
    let part = parts.get(stream!);
    if (!part) parts.set(stream!, (part = { stream: stream!, rows: [], recordIndex: [], ids: def.recordId ? [] : null, keys: [], times: [] }));
    part.rows.push(row);
    if (stream!.keyOf !== null) part.keys.push(stream!.keyOf(checked.data, ctx));
    if (stream!.timeOf !== null) part.times.push(stream!.timeOf(checked.data, ctx));
    part.recordIndex.push(i);
    if (part.ids !== null) part.ids.push(def.recordId!(checked.data));
    encodedBytes += row.length;
  }
  result.received = received;
  result.validatedAt = now();
  values = null;
  /** The parsed record at `index`, for a row PostgreSQL refused: the body parsed again (same text, same values). */
  let reparsed: unknown[] | null = null;
  const valueAt = (index: number): unknown => (reparsed ??= parseBody(text, task.format, task.envelope).values)[index];

  const partList = [...parts.values()];
  const streamName = single ? single.definition.name : LINE_ROUTER;
  /** Tally of the outcomes: the same function serves the in-transaction bookkeeping and the answer. */
  const tally = (outcomes: PartOutcome[]) => {
    const all = rejections.slice();
    let accepted = 0;
    let duplicates = 0;
    let first: IngestOutcome["first"] = null;
    let firstIndex = Infinity;
    partList.forEach((part, p) => {
      const { failures, duplicates: dup } = outcomes[p];
      const failed = new Set<number>();
      for (const f of failures) {
        failed.add(f.row);
        const index = part.recordIndex[f.row];
        const line = lines === null ? undefined : lines[index];
        const message = `rejected by the database: ${f.message}`;
        const raw = valueAt(index);
        all.push({ index, line, raw, stream: part.stream.definition.name, errors: [withLine({ index, path: "$", expected: "a row PostgreSQL accepts", message }, line, part.stream.definition.entity, raw)] });
      }
      for (let r = 0; r < part.rows.length; r++) {
        if (failed.has(r)) continue;
        if (dup !== null && dup[r] === 1) {
          duplicates++;
          continue;
        }
        accepted++;
        if (part.recordIndex[r] < firstIndex) {
          firstIndex = part.recordIndex[r];
          const def = part.stream.definition;
          first = { entity: def.entity ?? def.name, id: part.ids !== null ? part.ids[r] : null };
        }
      }
    });
    return { rejections: all, accepted, duplicates, first };
  };
  let lastTally = null as { outcomes: PartOutcome[]; t: ReturnType<typeof tally> } | null;
  const work: TaskWork = {
    priority: result.priority,
    parts: partList.map((p) => ({ target: p.stream.target, rows: p.rows, keys: p.keys, times: p.times })),
    bytes: encodedBytes,
    finalize(outcomes: PartOutcome[]) {
      // Pure function of the outcomes: a batch retried with row isolation calls it again.
      const t = tally(outcomes);
      lastTally = { outcomes, t };
      const deadLetters = t.rejections.map((r) =>
        deadLetterRow({ stream: r.stream ?? streamName, source: task.source, batchId: result.batchId, index: r.index, line: r.line ?? null, raw: rawText(r.raw), errors: r.errors, receivedAt }),
      );
      const row = task.recordBatch
        ? batchRow({ batchId: result.batchId, requestId: task.batchId, stream: streamName, received, accepted: t.accepted, rejected: t.rejections.length, duplicates: t.duplicates, createdAt: receivedAt })
        : null;
      return { batchRow: row, deadLetters };
    },
  };

  let outcomes: PartOutcome[];
  try {
    const committed = await committer.add(work);
    outcomes = committed.outcomes;
    result.committedAt = committed.committedAt;
    result.copyMs = committed.copyMs;
  } catch (err) {
    if (!(err instanceof DatabaseUnavailable)) throw err;
    if (partList.length > 0) return { ...emptyOutcome(task, "db_unavailable", err.message, now()), received };
    // Nothing to store: the validation answer stands; only its bookkeeping rows were lost.
    outcomes = [];
    result.committedAt = now();
  }

  // The committed transaction's finalize already tallied these very outcomes.
  const t = lastTally !== null && lastTally.outcomes === outcomes ? lastTally.t : tally(outcomes);
  result.accepted = t.accepted;
  result.duplicates = t.duplicates;
  result.rejected = t.rejections.length;
  result.first = t.first;
  const errors: RecordError[] = [];
  for (const r of t.rejections) for (const e of r.errors) errors.push(e);
  errors.sort((a, b) => a.index - b.index);
  if (errors.length > data.maxErrorsReported) {
    errors.length = data.maxErrorsReported;
    result.errorsTruncated = true;
  }
  result.errors = errors;
  return result;
}

/** Keeps the batch status and dead letter of a body that could not be read at all. */
async function recordOnly(task: IngestTask, result: IngestOutcome, rejections: Rejection[], receivedAt: string): Promise<void> {
  const stream = task.stream;
  try {
    await committer.add({
      priority: task.priority,
      parts: [],
      bytes: 0,
      finalize: () => ({
        batchRow: batchRow({ batchId: result.batchId, requestId: task.batchId, stream, received: 0, accepted: 0, rejected: 1, duplicates: 0, createdAt: receivedAt }),
        deadLetters: rejections.map((r) =>
          deadLetterRow({ stream, source: task.source, batchId: result.batchId, index: null, line: null, raw: rawText(r.raw), errors: r.errors, receivedAt }),
        ),
      }),
    });
  } catch {
    // The 400 answer does not depend on the database; only the dead letter is lost.
  }
}

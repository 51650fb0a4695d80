/**
 * Piscina task handler: runs inside each pool thread. Reads a body from the shared ring, parses it,
 * validates each record with the stream's typia validator, encodes COPY rows and hands them to group
 * commit. The task resolves only after PostgreSQL committed its rows: the front thread acknowledges on that.
 */
import { workerData, threadId } from "node:worker_threads";
import { streams } from "../config/streams";
import { now } from "../src/clock";
import type { StreamDefinition } from "../src/stream-definition";
import { copyStatement } from "../src/sql-identifiers";
import { decodeBody, parseBody, UnparseableBody, type ParsedBody } from "./body-parser";
import { CopyWriter, DatabaseUnavailable } from "./copy-writer";
import { GroupCommitter } from "./group-commit";
import { validationErrors } from "./record-errors";
import { compileRowEncoder, EncodeError, type RowEncoder } from "./row-encoder";
import type { IngestOutcome, IngestTask, RecordError } from "./task-protocol";

export interface WorkerData {
  ring: SharedArrayBuffer;
  connectionString: string;
  dbSchema: string;
  batchSize: number;
  batchTimeoutMs: number;
  maxBatchBytes: number;
  maxErrorsReported: number;
}

const data = workerData as WorkerData;
const ring = new Uint8Array(data.ring);

interface CompiledStream {
  definition: StreamDefinition;
  encode: RowEncoder<unknown>;
  copySql: string;
}

const compiled = new Map<string, CompiledStream>();
for (const definition of streams) {
  compiled.set(definition.name, {
    definition,
    encode: compileRowEncoder(definition),
    copySql: copyStatement(
      data.dbSchema,
      definition.table,
      definition.columns.map((c) => c.name),
    ),
  });
}

const committer = new GroupCommitter(
  new CopyWriter({ connectionString: data.connectionString, applicationName: `ingestd-worker-${threadId}` }),
  { batchSize: data.batchSize, batchTimeoutMs: data.batchTimeoutMs, maxBatchBytes: data.maxBatchBytes },
);

function outcome(task: IngestTask, kind: IngestOutcome["kind"], message: string): IngestOutcome {
  return {
    kind,
    batchId: task.batchId,
    priority: task.priority,
    received: 0,
    accepted: 0,
    rejected: 0,
    duplicates: 0,
    errors: [],
    errorsTruncated: false,
    message,
    validatedAt: now(),
    committedAt: 0,
    copyMs: 0,
  };
}

export default async function ingest(task: IngestTask): Promise<IngestOutcome> {
  const stream = compiled.get(task.stream);
  if (!stream) return outcome(task, "unparseable", `unknown stream ${task.stream}`);

  let body: ParsedBody;
  try {
    body = parseBody(decodeBody(ring.subarray(task.offset, task.offset + task.length)), task.format, task.envelope);
  } catch (err) {
    if (err instanceof UnparseableBody) return outcome(task, "unparseable", err.message);
    return outcome(task, "unparseable", `cannot read body: ${(err as Error).message}`);
  }

  const result = outcome(task, "done", "");
  if (body.batchId !== undefined) result.batchId = body.batchId;
  if (body.priority !== undefined) result.priority = body.priority;
  const max = data.maxErrorsReported;
  const errors: RecordError[] = [];
  const pushErrors = (list: RecordError[]) => {
    for (const e of list) {
      if (errors.length < max) errors.push(e);
      else result.errorsTruncated = true;
    }
  };
  pushErrors(body.errors);

  const values = body.values;
  const lines = body.lines.length > 0 ? body.lines : null;
  const ctx = { receivedAt: new Date(task.receivedAt).toISOString() };
  const rows: string[] = [];
  /** Record index of each encoded row, to map database refusals back to records. */
  const rowRecord: number[] = [];
  let bytes = 0;
  let rejected = body.errors.length;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === undefined) continue; // a line that failed to parse, already reported
    const line = lines === null ? undefined : lines[i];
    const checked = stream.definition.validate(value);
    if (!checked.success) {
      rejected++;
      pushErrors(validationErrors(i, line, checked));
      continue;
    }
    let row: string;
    try {
      row = stream.encode(checked.data, ctx);
    } catch (err) {
      rejected++;
      if (!(err instanceof EncodeError)) throw err;
      const e: RecordError = { index: i, path: err.path, expected: err.expected, message: line === undefined ? err.message : `line ${line}: ${err.message}` };
      if (line !== undefined) e.line = line;
      pushErrors([e]);
      continue;
    }
    rows.push(row);
    rowRecord.push(i);
    bytes += row.length;
  }
  result.received = values.length;
  result.validatedAt = now();

  if (rows.length > 0) {
    try {
      const committed = await committer.add(stream.copySql, result.priority, rows, bytes);
      result.committedAt = committed.committedAt;
      result.copyMs = committed.copyMs;
      for (const failure of committed.failures) {
        const index = rowRecord[failure.row];
        const line = lines === null ? undefined : lines[index];
        const e: RecordError = {
          index,
          path: "$",
          expected: "a row PostgreSQL accepts",
          message: `${line === undefined ? "" : `line ${line}: `}rejected by the database: ${failure.message}`,
        };
        if (line !== undefined) e.line = line;
        pushErrors([e]);
      }
      rejected += committed.failures.length;
      result.accepted = rows.length - committed.failures.length;
    } catch (err) {
      if (err instanceof DatabaseUnavailable) return { ...outcome(task, "db_unavailable", err.message), received: values.length };
      throw err;
    }
  } else {
    result.committedAt = now();
  }
  result.rejected = rejected;
  // Errors in record order, whichever stage found them.
  errors.sort((a, b) => a.index - b.index);
  result.errors = errors;
  return result;
}

/**
 * From a settled body's outcome to what its producer is told, in each vocabulary ingestd speaks: the
 * canonical HTTP answer, the TPC-H line endpoints' answers, and the WebSocket ack. All share one reading of
 * an outcome (outcomeStatus); see docs/http-api.md and docs/websocket-protocol.md.
 */
import type { IngestOutcome, RecordError } from "../../shared/task-protocol";

export interface Answer {
  status: number;
  body: unknown;
}

/** Shapes an HTTP answer from a settled task (each ingest route picks one). */
export type AnswerRenderer = (stream: string, outcome: IngestOutcome, durationMs: number) => Answer;

/**
 * 200 all stored (or duplicates), 207 some refused, 422 all refused; 400 unreadable body, 503 database
 * unavailable (nothing stored), 500 a worker failure.
 */
export function outcomeStatus(outcome: IngestOutcome): number {
  switch (outcome.kind) {
    case "unparseable":
      return 400;
    case "db_unavailable":
      return 503;
    case "failed":
      return 500;
  }
  return outcome.rejected === 0 ? 200 : outcome.accepted + outcome.duplicates > 0 ? 207 : 422;
}

const roundMs = (ms: number) => Math.round(ms * 1000) / 1000;

/** The canonical answer of the ingest endpoints (docs/http-api.md). */
export const canonicalAnswer: AnswerRenderer = (stream, outcome, durationMs) => {
  const status = outcomeStatus(outcome);
  const base = { stream, batch_id: outcome.batchId };
  switch (outcome.kind) {
    case "unparseable":
      return { status, body: { status: "error", error: "malformed_body", message: outcome.message, ...base } };
    case "db_unavailable":
      return {
        status,
        body: {
          status: "error",
          error: "database_unavailable",
          message: "database unavailable or not answering within the deadline; nothing from this request was stored, retry later",
          ...base,
        },
      };
    case "failed":
      return { status, body: { status: "error", error: "internal", message: outcome.message, ...base } };
  }
  const body: Record<string, unknown> = {
    status: status === 200 ? "success" : status === 207 ? "partial" : "rejected",
    ...base,
    accepted: outcome.accepted,
    rejected: outcome.rejected,
    duplicates: outcome.duplicates,
    errors: outcome.errors,
    duration_ms: roundMs(durationMs),
  };
  if (outcome.errorsTruncated) body.errors_truncated = true;
  return { status, body };
};

/** An error of a TPC-H line, as the line endpoints report it. */
export interface LineError {
  line_number: number;
  entity: string;
  message: string;
  line: string;
}

/** `lineOffset`: lines of the same upload already reported (the streamed endpoint numbers across segments). */
export function lineErrors(errors: RecordError[], lineOffset = 0): LineError[] {
  return errors.map((e) => ({
    line_number: (e.line ?? e.index + 1) + lineOffset,
    entity: e.entity ?? "Unknown",
    message: withoutLinePrefix(e.message),
    line: e.text ?? "",
  }));
}

const withoutLinePrefix = (message: string) => message.replace(/^line \d+: /, "");

/** The line endpoints' answer when nothing was processed. */
function lineFailure(outcome: IngestOutcome): Answer | null {
  if (outcome.kind === "done") return null;
  const message = outcome.kind === "db_unavailable" ? "database unavailable; nothing was stored, retry later" : outcome.message;
  return { status: outcomeStatus(outcome), body: { status: "error", message } };
}

/** `POST /ingest/message`: one TPC-H line. */
export const lineMessageAnswer: AnswerRenderer = (_stream, outcome) => {
  const failed = lineFailure(outcome);
  if (failed) return failed;
  if (outcome.rejected > 0 || outcome.first === null) {
    const e = outcome.errors[0];
    return {
      status: 400,
      body: {
        status: "error",
        message: e ? withoutLinePrefix(e.message) : "line not stored",
        entity: e?.entity ?? "Unknown",
        line: e?.text ?? "",
      },
    };
  }
  return {
    status: 200,
    body: { status: "success", entity: outcome.first.entity, id: outcome.first.id, timestamp: new Date().toISOString() },
  };
};

/** `POST /ingest/batch`: many TPC-H lines. */
export const lineBatchAnswer: AnswerRenderer = (_stream, outcome, durationMs) => {
  const failed = lineFailure(outcome);
  if (failed) return failed;
  const status = outcomeStatus(outcome);
  return {
    status,
    body: {
      status: status === 200 ? "success" : status === 207 ? "partial" : "failed",
      processed: outcome.received,
      inserted: outcome.accepted,
      failed: outcome.rejected,
      errors: lineErrors(outcome.errors),
      duration_ms: roundMs(durationMs),
    },
  };
};

/** One progress event of `POST /ingest/stream`: a committed segment. */
export function lineProgress(segment: number, outcome: IngestOutcome, linesBefore: number, total: number): unknown {
  return {
    batch: segment,
    processed: outcome.received,
    inserted: outcome.accepted,
    failed: outcome.rejected,
    errors: lineErrors(outcome.errors, linesBefore),
    total,
  };
}

/**
 * The WebSocket ack of frame `seq` (docs/websocket-protocol.md). A frame that cannot be read at all, or
 * that a worker failed on, is acked with everything rejected: the connection stays usable.
 */
export function wsAck(seq: number, outcome: IngestOutcome): string {
  let accepted = outcome.accepted;
  let rejected = outcome.rejected;
  let errors: RecordError[] = outcome.errors;
  if (outcome.kind === "unparseable" || outcome.kind === "failed") {
    accepted = 0;
    rejected = Math.max(1, outcome.received);
    errors = [{ index: 0, path: "$", expected: "JSON, NDJSON or text lines", message: outcome.message }];
  }
  const ack: Record<string, unknown> = { type: "ack", seq, accepted, rejected, duplicates: outcome.duplicates, errors };
  if (outcome.errorsTruncated) ack.errors_truncated = true;
  return JSON.stringify(ack);
}

/** The ack of an empty frame: nothing to store, one rejection. */
export function emptyFrameAck(seq: number): string {
  return JSON.stringify({
    type: "ack",
    seq,
    accepted: 0,
    rejected: 1,
    duplicates: 0,
    errors: [{ index: 0, path: "$", expected: "at least one record", message: "empty frame" }],
  });
}

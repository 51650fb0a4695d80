/**
 * COPY rows for the daemon's own tables: `ingest_batches` (one row per HTTP request, for status queries)
 * and `ingest_dead_letters` (one row per rejected record). They commit in the same transaction as the
 * records they describe, so a status never claims rows that were not stored.
 */
import { escapeCopyText } from "../records/row-encoder";
import type { RecordError } from "../../src/shared/task-protocol";

/** Longest raw text kept for one dead letter; longer records are cut with a marker. */
const MAX_RAW_CHARS = 1 << 20;

/** Any string made storable as PostgreSQL text: no NUL, no unpaired surrogate, COPY-escaped. */
export function storableText(s: string): string {
  let t = s.length > MAX_RAW_CHARS ? `${s.slice(0, MAX_RAW_CHARS)}…[truncated ${s.length - MAX_RAW_CHARS} chars]` : s;
  if (t.indexOf("\u0000") !== -1) t = t.replace(/\u0000/g, "\\u0000");
  if (!t.isWellFormed()) t = t.toWellFormed();
  return escapeCopyText(t);
}

/** The raw text of a record as received (lines) or re-serialised (JSON values). */
export function rawText(value: unknown): string {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return "[record cannot be serialised: nested too deeply]";
  }
}

export type BatchStatus = "committed" | "partial" | "failed";

export function batchStatus(accepted: number, rejected: number, duplicates: number): BatchStatus {
  if (rejected === 0) return "committed";
  return accepted + duplicates > 0 ? "partial" : "failed";
}

export interface BatchRowFields {
  /** The producer's batch_id when it gave one, else the request id. */
  batchId: string;
  /** The id the daemon gave the request (returned by a 202). */
  requestId: string;
  stream: string;
  received: number;
  accepted: number;
  rejected: number;
  duplicates: number;
  createdAt: string;
}

/** A row of ingest_batches; committed_at is the transaction's time. */
export function batchRow(f: BatchRowFields): string {
  const status = batchStatus(f.accepted, f.rejected, f.duplicates);
  return `${storableText(f.batchId)}\t${storableText(f.requestId)}\t${storableText(f.stream)}\t${status}\t${f.received}\t${f.accepted}\t${f.rejected}\t${f.duplicates}\t${f.createdAt}\t${new Date().toISOString()}\n`;
}

export interface DeadLetterFields {
  stream: string;
  source: string;
  batchId: string;
  index: number | null;
  line: number | null;
  raw: string;
  errors: RecordError[];
  receivedAt: string;
}

/**
 * Error text jsonb accepts once JSON-encoded: jsonb refuses the escapes of NUL and of an unpaired surrogate
 * (a line prefix holding NUL, a message cut inside a surrogate pair), and the failed COPY would fail the
 * whole group-commit batch.
 */
function jsonbSafe(s: string): string {
  const t = s.indexOf("\u0000") !== -1 ? s.replace(/\u0000/g, "\\u0000") : s;
  return t.isWellFormed() ? t : t.toWellFormed();
}

export function deadLetterRow(f: DeadLetterFields): string {
  const errors = f.errors.map((e) => ({ path: jsonbSafe(e.path), expected: jsonbSafe(e.expected), message: jsonbSafe(e.message) }));
  return (
    `${storableText(f.stream)}\t${storableText(f.source)}\t${storableText(f.batchId)}\t` +
    `${f.index ?? "\\N"}\t${f.line ?? "\\N"}\t${storableText(f.raw)}\t${storableText(JSON.stringify(errors))}\t${f.receivedAt}\n`
  );
}

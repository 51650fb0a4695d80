import type { IValidation } from "typia";
import type { RecordError } from "../../src/shared/task-protocol";

/** typia reports `$input.payload.x`; producers see `payload.x`, and `$` for the record itself. */
export function fieldPath(typiaPath: string): string {
  if (typiaPath === "$input") return "$";
  return typiaPath.startsWith("$input.") ? typiaPath.slice(7) : typiaPath.replace(/^\$input/, "$");
}

function show(value: unknown): string {
  if (value === undefined) return "nothing";
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Errors listed per record; the rest are summed up in one more entry. A record of a thousand unknown fields
 * would otherwise carry a thousand errors into its answer and dead letter, and hold them in the worker
 * until the commit: memory the byte budget for bodies (src/front/dispatcher.ts) does not see.
 */
export const MAX_ERRORS_PER_RECORD = 20;

export function validationErrors(index: number, line: number | undefined, failure: IValidation.IFailure): RecordError[] {
  const entry = (path: string, expected: string, message: string): RecordError => {
    const error: RecordError = { index, path, expected, message: line === undefined ? message : `line ${line}: ${message}` };
    if (line !== undefined) error.line = line;
    return error;
  };
  const listed = failure.errors.length > MAX_ERRORS_PER_RECORD ? failure.errors.slice(0, MAX_ERRORS_PER_RECORD) : failure.errors;
  const errors = listed.map((e) => {
    const path = fieldPath(e.path);
    const message =
      e.value === undefined && !e.expected.includes("undefined")
        ? `${path}: required, expected ${e.expected}`
        : e.expected === "undefined"
          ? `${path}: unknown field, not allowed by the stream's type`
          : `${path}: expected ${e.expected}, got ${show(e.value)}`;
    return entry(path, e.expected, message);
  });
  const more = failure.errors.length - listed.length;
  if (more > 0)
    errors.push(
      entry("$", "a record of the stream's type", `$: ${more} more errors in this record (the first ${MAX_ERRORS_PER_RECORD} are listed)`),
    );
  return errors;
}

/** Longest line text echoed back in an error. */
const MAX_ECHO = 1000;

/**
 * Completes an error entry of a line-format record: its line number (also leading the message), the
 * entity it was routed to, and the line's text. Mutates and returns `error`.
 */
export function withLine(error: RecordError, line: number | undefined, entity: string | undefined, raw?: unknown): RecordError {
  if (line !== undefined) {
    error.line = line;
    if (!error.message.startsWith("line ")) error.message = `line ${line}: ${error.message}`;
    if (typeof raw === "string") error.text = raw.length > MAX_ECHO ? raw.slice(0, MAX_ECHO) : raw;
  }
  if (entity !== undefined) error.entity = entity;
  return error;
}

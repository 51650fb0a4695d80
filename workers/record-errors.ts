import type { IValidation } from "typia";
import type { RecordError } from "./task-protocol";

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

export function validationErrors(index: number, line: number | undefined, failure: IValidation.IFailure): RecordError[] {
  return failure.errors.map((e) => {
    const path = fieldPath(e.path);
    const message =
      e.value === undefined && !e.expected.includes("undefined")
        ? `${path}: required, expected ${e.expected}`
        : e.expected === "undefined"
          ? `${path}: unknown field, not allowed by the stream's type`
          : `${path}: expected ${e.expected}, got ${show(e.value)}`;
    const error: RecordError = { index, path, expected: e.expected, message: line === undefined ? message : `line ${line}: ${message}` };
    if (line !== undefined) error.line = line;
    return error;
  });
}

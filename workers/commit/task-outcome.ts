/**
 * What became of a task's records once its rows were committed: stored, duplicate, or refused (by
 * validation, or by PostgreSQL), and the answer's counts and errors made from that.
 */
import type { IngestOutcome, RecordError } from "../../src/shared/task-protocol";
import { withLine } from "../records/record-errors";
import type { Rejection, StreamPart, ValidatedRecords } from "../records/validate";
import type { RowFailure } from "./copy-writer";
import type { PartOutcome } from "./group-commit";

export interface TaskTally {
  /** The validation rejections, then the rows PostgreSQL refused. */
  rejections: Rejection[];
  accepted: number;
  duplicates: number;
  /** Entity and id of the stored record that came first in the body. */
  first: IngestOutcome["first"];
}

/**
 * Tallies the task's parts' commit outcomes. A pure function of them: the bookkeeping rows written in the
 * transaction and the answer come from the same tally.
 */
export function tallyTask(records: ValidatedRecords, outcomes: readonly PartOutcome[], recordAt: (index: number) => unknown): TaskTally {
  const rejections = records.rejections.slice();
  let accepted = 0;
  let duplicates = 0;
  let first: IngestOutcome["first"] = null;
  let firstIndex = Infinity;
  for (let p = 0; p < records.parts.length; p++) {
    const part = records.parts[p];
    const { failures, duplicates: duplicateRows } = outcomes[p];
    const failed = new Set<number>();
    for (const f of failures) {
      failed.add(f.row);
      rejections.push(refusedRow(part, f, records.lines, recordAt));
    }
    for (let r = 0; r < part.rows.length; r++) {
      if (failed.has(r)) continue;
      if (duplicateRows !== null && duplicateRows[r] === 1) {
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
  }
  return { rejections, accepted, duplicates, first };
}

/** The rejection of a row PostgreSQL refused; its record is read again from the body text. */
function refusedRow(part: StreamPart, failure: RowFailure, lines: number[] | null, recordAt: (index: number) => unknown): Rejection {
  const index = part.recordIndex[failure.row];
  const line = lines === null ? undefined : lines[index];
  const message = `rejected by the database: ${failure.message}`;
  const raw = recordAt(index);
  const def = part.stream.definition;
  return {
    index,
    line,
    raw,
    stream: def.name,
    errors: [withLine({ index, path: "$", expected: "a row PostgreSQL accepts", message }, line, def.entity, raw)],
  };
}

/** Puts the tally into the answer: counts, the first stored record, and the errors in record order, cut at `maxErrors`. */
export function reportTally(result: IngestOutcome, tally: TaskTally, maxErrors: number): void {
  result.accepted = tally.accepted;
  result.duplicates = tally.duplicates;
  result.rejected = tally.rejections.length;
  result.first = tally.first;
  const errors: RecordError[] = [];
  for (const r of tally.rejections) for (const e of r.errors) errors.push(e);
  errors.sort((a, b) => a.index - b.index);
  if (errors.length > maxErrors) {
    errors.length = maxErrors;
    result.errorsTruncated = true;
  }
  result.errors = errors;
}

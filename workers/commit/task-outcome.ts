/**
 * What became of a task's records once its rows were committed: stored, duplicate, or refused (by
 * validation, or by PostgreSQL), and the answer's counts and errors made from that.
 */
import {
  RECORD_DUPLICATE,
  RECORD_REJECTED,
  type EntityCount,
  type IngestOutcome,
  type RecordError,
  type RecordOutcomes,
} from "../../src/shared/task-protocol";
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
  /** Stored plus duplicates, per part's entity. */
  byEntity: EntityCount[];
}

/** The name a stream's records are counted and reported under: its line entity (`Order`), else its name. */
const entityOf = (part: StreamPart) => part.stream.definition.entity ?? part.stream.definition.name;

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
  const byEntity: EntityCount[] = [];
  for (let p = 0; p < records.parts.length; p++) {
    const part = records.parts[p];
    const before = accepted + duplicates;
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
        first = { entity: entityOf(part), id: part.ids !== null ? part.ids[r] : null };
      }
    }
    byEntity.push({ entity: entityOf(part), processed: accepted + duplicates - before });
  }
  return { rejections, accepted, duplicates, first, byEntity };
}

/**
 * Each record's entity and status (stored, duplicate, rejected), by record index: for answers that report
 * every line (docs/http-api.md#tpc-h-stream). Built only for tasks that ask for it.
 */
export function recordOutcomes(records: ValidatedRecords, outcomes: readonly PartOutcome[], tally: TaskTally): RecordOutcomes {
  const entities: string[] = [];
  const code = (name: string | undefined) => {
    if (name === undefined) return 0;
    let i = entities.indexOf(name);
    if (i === -1) i = entities.push(name) - 1;
    return i + 1;
  };
  const entity = new Uint8Array(records.received);
  const status = new Uint8Array(records.received); // RECORD_STORED unless marked below
  for (let p = 0; p < records.parts.length; p++) {
    const part = records.parts[p];
    const c = code(entityOf(part));
    const duplicateRows = outcomes[p]?.duplicates ?? null;
    for (let r = 0; r < part.rows.length; r++) {
      const index = part.recordIndex[r];
      entity[index] = c;
      if (duplicateRows !== null && duplicateRows[r] === 1) status[index] = RECORD_DUPLICATE;
    }
  }
  // After the rows: a row PostgreSQL refused is among the rejections too.
  for (const r of tally.rejections) {
    entity[r.index] = code(r.errors[0]?.entity ?? r.stream);
    status[r.index] = RECORD_REJECTED;
  }
  return { entities, entity, status };
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
  result.byEntity = tally.byEntity;
  const errors: RecordError[] = [];
  for (const r of tally.rejections) for (const e of r.errors) errors.push(e);
  errors.sort((a, b) => a.index - b.index);
  if (errors.length > maxErrors) {
    errors.length = maxErrors;
    result.errorsTruncated = true;
  }
  result.errors = errors;
}

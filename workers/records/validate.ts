/**
 * A parsed body's records sorted into COPY rows, one part per stream, and rejections. Each record is routed
 * by its line prefix (line-router tasks), parsed (line formats), checked by its stream's typia validator and
 * encoded; a record failing any step is rejected alone.
 */
import { LineFormatError } from "../../src/shared/line-fields";
import type { RowContext } from "../../src/shared/stream-definition";
import type { RecordError } from "../../src/shared/task-protocol";
import type { ParsedBody } from "./body-parser";
import type { CompiledStream, StreamTable } from "./compiled-streams";
import { CopyRows } from "./copy-rows";
import { validationErrors, withLine } from "./record-errors";
import { EncodeError } from "./row-encoder";

/** One stream's share of a task: its rows and, per row, the record it came from. */
export interface StreamPart {
  stream: CompiledStream;
  /** COPY text rows, each ending in a newline, as bytes (copy-rows.ts says why). */
  rows: CopyRows;
  /** Each row's record index in the body. */
  recordIndex: number[];
  /** Each row's `recordId` (streams that report one), taken before the parsed records are let go. */
  ids: unknown[] | null;
  /** Deduplicating streams: each row's id-state key (src/shared/dedup-key.ts); empty otherwise. */
  keys: string[];
}

export interface Rejection {
  index: number;
  line: number | undefined;
  /** The record as received (a line's text) or parsed (a JSON value), for its dead letter. */
  raw: unknown;
  errors: RecordError[];
  /** The stream a routed line belongs to (its dead letter is filed there); unset: the task's stream. */
  stream?: string;
}

/** What a task keeps of its records once validated: the parsed records themselves are let go. */
export interface ValidatedRecords {
  /** Records in the body, valid or not. */
  received: number;
  /** Line formats: each record's 1-based line number, by record index; null for a JSON body. */
  lines: number[] | null;
  /** Streams in the order their first record came. */
  parts: StreamPart[];
  rejections: Rejection[];
  /** Bytes of all rows: what group commit's byte budget counts. */
  rowBytes: number;
}

/**
 * Sorts the body's records. `single` is the task's stream; null when each line is routed by its prefix.
 * Takes what the answer needs out of the parsed records, so `body` can be let go before the commit.
 */
export function validateRecords(body: ParsedBody, single: CompiledStream | null, table: StreamTable, ctx: RowContext): ValidatedRecords {
  const values = body.values;
  const lines = body.lines.length > 0 ? body.lines : null;
  const sorter = new RecordSorter(table, ctx, parseRejections(body));
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === undefined) continue; // a line that failed to parse, already reported
    const line = lines === null ? undefined : lines[i];
    const stream = single ?? sorter.routeLine(value as string, i, line);
    if (stream !== undefined) sorter.add(stream, value, i, line);
  }
  const parts = sorter.parts.map(({ texts, ...part }) => ({ ...part, rows: CopyRows.encode(texts) }));
  let rowBytes = 0;
  for (const part of parts) rowBytes += part.rows.bytes.length;
  return { received: values.length, lines, parts, rejections: sorter.rejections, rowBytes };
}

/** The lines the body parser could not read, as rejections. */
function parseRejections(body: ParsedBody): Rejection[] {
  const rejections: Rejection[] = [];
  for (let k = 0; k < body.errors.length; k++) {
    const e = body.errors[k];
    rejections.push({ index: e.index, line: e.line, raw: body.errorRaw[k] ?? "", errors: [e] });
  }
  return rejections;
}

/** A part while its records are sorted: its rows as text, encoded once all are in. */
type SortingPart = Omit<StreamPart, "rows"> & { texts: string[] };

/** One task's parts and rejections while its records are sorted. */
class RecordSorter {
  readonly parts: SortingPart[] = [];
  private readonly partOf = new Map<CompiledStream, SortingPart>();

  constructor(
    private readonly table: StreamTable,
    private readonly ctx: RowContext,
    readonly rejections: Rejection[],
  ) {}

  /** The stream a line's prefix names; a line of no known prefix is rejected. */
  routeLine(text: string, index: number, line: number | undefined): CompiledStream | undefined {
    const bar = text.indexOf("|");
    const stream = bar > 0 ? this.table.byLinePrefix.get(text.slice(0, bar)) : undefined;
    if (stream === undefined) {
      const prefixes = this.table.linePrefixes;
      const kind = bar > 0 ? `"${text.slice(0, bar)}"` : "missing";
      const error: RecordError = {
        index,
        path: "$",
        expected: `a line starting with ${prefixes}`,
        message: `unknown record type ${kind}; expected a line starting with ${prefixes}`,
      };
      this.rejections.push({ index, line, raw: text, errors: [withLine(error, line, undefined, text)] });
    }
    return stream;
  }

  /** One record: parsed (line formats), validated and encoded into a row of its stream's part, or rejected. */
  add(stream: CompiledStream, value: unknown, index: number, line: number | undefined): void {
    const def = stream.definition;
    let record: unknown = value;
    if (def.parseLine) {
      try {
        record = def.parseLine(value as string);
      } catch (err) {
        if (!(err instanceof LineFormatError)) throw err;
        this.reject(stream, value, index, line, [{ index, path: err.path, expected: err.expected, message: err.message }]);
        return;
      }
    }
    const checked = stream.validate(record);
    if (!checked.success) {
      this.reject(stream, value, index, line, validationErrors(index, line, checked));
      return;
    }
    let row: string;
    try {
      row = stream.encode(checked.data, this.ctx);
    } catch (err) {
      if (!(err instanceof EncodeError)) throw err;
      this.reject(stream, value, index, line, [{ index, path: err.path, expected: err.expected, message: err.message }]);
      return;
    }
    this.addRow(stream, row, checked.data, index);
  }

  private addRow(stream: CompiledStream, row: string, record: unknown, index: number): void {
    let part = this.partOf.get(stream);
    if (part === undefined) {
      part = { stream, texts: [], recordIndex: [], ids: stream.definition.recordId ? [] : null, keys: [] };
      this.partOf.set(stream, part);
      this.parts.push(part);
    }
    part.texts.push(row);
    if (stream.keyOf !== null) part.keys.push(stream.keyOf(record, this.ctx));
    part.recordIndex.push(index);
    if (part.ids !== null) part.ids.push(stream.definition.recordId!(record));
  }

  /** Files a record's errors, completed with its line, entity and text, under its stream. */
  private reject(stream: CompiledStream, value: unknown, index: number, line: number | undefined, errors: RecordError[]): void {
    const def = stream.definition;
    for (const e of errors) withLine(e, line, def.entity, value);
    this.rejections.push({ index, line, raw: value, stream: def.name, errors });
  }
}

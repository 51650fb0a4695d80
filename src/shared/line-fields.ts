/**
 * Pipe-delimited line records (`O|1|100|O|123.45|...`): splitting a line into named, typed fields. Types
 * are checked loosely here (integers become numbers, the rest stay text) and strictly by the stream's
 * typia validator afterwards, so a bad field is always reported with its name.
 */

import type { ColumnSpec, ColumnType } from "./stream-definition";

export class LineFormatError extends Error {
  constructor(
    readonly path: string,
    readonly expected: string,
    message: string,
  ) {
    super(message);
  }
}

/** `key` and `int` are both integers in the line; a key is stored as bigint, an int as integer. */
export type FieldKind = "key" | "int" | "decimal" | "date" | "text";

export interface LineLayout {
  prefix: string;
  fields: readonly (readonly [name: string, kind: FieldKind])[];
}

const INTEGER = /^-?\d{1,15}$/;

/**
 * Blank lines and `#` comment lines of a text body are skipped, not records (seed 004's files carry them);
 * the line numbers of the records after them still count them.
 */
export function isSkippedLine(line: string): boolean {
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c === 32 || c === 9 || c === 13) continue;
    return c === 35; // "#"
  }
  return true;
}

export function lineParser(layout: LineLayout): (line: string) => Record<string, string | number> {
  const n = layout.fields.length;
  return (line) => {
    const parts = line.split("|");
    // dbgen's own output (`orders.tbl`) has no prefix: its first field is the table's integer key. A table's
    // own stream takes such lines as they are; the router (`tpch`) needs the prefix to pick the table.
    const from = parts[0] === layout.prefix ? 1 : INTEGER.test(parts[0]) ? 0 : -1;
    if (from === -1) {
      throw new LineFormatError(
        "$",
        `a line starting with "${layout.prefix}|"`,
        `expected a line starting with "${layout.prefix}|", got ${JSON.stringify(line.slice(0, 12))}`,
      );
    }
    // dbgen writes a trailing `|`: accept one empty last field.
    if (parts.length === n + from + 1 && parts[n + from] === "") parts.pop();
    if (parts.length !== n + from) {
      const after = from === 1 ? ` after "${layout.prefix}|"` : "";
      throw new LineFormatError("$", `${n} fields${after}`, `expected ${n} fields${after}, got ${parts.length - from}`);
    }
    const record: Record<string, string | number> = {};
    for (let i = 0; i < n; i++) {
      const [name, kind] = layout.fields[i];
      const raw = parts[i + from];
      if (kind === "int" || kind === "key") {
        if (!INTEGER.test(raw)) throw new LineFormatError(name, "an integer", `${name}: expected an integer, got ${JSON.stringify(raw)}`);
        record[name] = Number(raw);
      } else {
        record[name] = raw;
      }
    }
    return record;
  };
}

/** Whether text lines in `bytes` (UTF-8) hold a record, i.e. a line that isSkippedLine would not skip. */
export function hasRecordLine(bytes: Uint8Array): boolean {
  let lineStart = true;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c === 10) lineStart = true;
    else if (lineStart && c !== 32 && c !== 9 && c !== 13) {
      if (c !== 35) return true;
      lineStart = false; // a comment: skip to its end
    }
  }
  return false;
}

const COLUMN_TYPES: Record<FieldKind, ColumnType> = { key: "bigint", int: "integer", decimal: "numeric", date: "date", text: "text" };

/** The table columns of a line layout: one per field, same name, the field's value as is. */
export function lineColumns<R>(layout: LineLayout): ColumnSpec<R>[] {
  return layout.fields.map(([name, kind]) => ({
    name,
    type: COLUMN_TYPES[kind],
    value: (record: R) => (record as Record<string, unknown>)[name],
  }));
}

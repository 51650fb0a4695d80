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

export function lineParser(layout: LineLayout): (line: string) => Record<string, string | number> {
  const n = layout.fields.length;
  return (line) => {
    const parts = line.split("|");
    if (parts[0] !== layout.prefix) {
      throw new LineFormatError(
        "$",
        `a line starting with "${layout.prefix}|"`,
        `expected a line starting with "${layout.prefix}|", got ${JSON.stringify(line.slice(0, 12))}`,
      );
    }
    // dbgen writes a trailing `|`: accept one empty last field.
    if (parts.length === n + 2 && parts[n + 1] === "") parts.pop();
    if (parts.length !== n + 1) {
      throw new LineFormatError(
        "$",
        `${n} fields after "${layout.prefix}|"`,
        `expected ${n} fields after "${layout.prefix}|", got ${parts.length - 1}`,
      );
    }
    const record: Record<string, string | number> = {};
    for (let i = 0; i < n; i++) {
      const [name, kind] = layout.fields[i];
      const raw = parts[i + 1];
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

const COLUMN_TYPES: Record<FieldKind, ColumnType> = { key: "bigint", int: "integer", decimal: "numeric", date: "date", text: "text" };

/** The table columns of a line layout: one per field, same name, the field's value as is. */
export function lineColumns<R>(layout: LineLayout): ColumnSpec<R>[] {
  return layout.fields.map(([name, kind]) => ({
    name,
    type: COLUMN_TYPES[kind],
    value: (record: R) => (record as Record<string, unknown>)[name],
  }));
}

import type { ColumnSpec, ColumnType, RowContext, StreamDefinition } from "../../src/shared/stream-definition";

/**
 * PostgreSQL COPY text-format encoding. Values only ever reach the database through here, so this is
 * where injection is impossible by construction: every value is escaped, identifiers come from config.
 */

/** A value the database would refuse, found before it is sent; reported for its record alone. */
export class EncodeError extends Error {
  constructor(
    readonly path: string,
    readonly expected: string,
    message: string,
  ) {
    super(message);
  }
}

const NEEDS_ESCAPE = /[\\\n\r\t]/;
const ESCAPES = /[\\\n\r\t]/g;
const ESCAPE_MAP: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

export function escapeCopyText(s: string): string {
  return NEEDS_ESCAPE.test(s) ? s.replace(ESCAPES, (c) => ESCAPE_MAP[c]) : s;
}

function encodeText(value: unknown, column: string): string {
  const s = typeof value === "string" ? value : String(value);
  if (s.indexOf("\u0000") !== -1) {
    throw new EncodeError(column, "text without NUL characters", `${column}: PostgreSQL text cannot hold a NUL (\\u0000) character`);
  }
  if (!s.isWellFormed()) {
    throw new EncodeError(column, "well-formed Unicode text", `${column}: contains an unpaired UTF-16 surrogate`);
  }
  return escapeCopyText(s);
}

function encodeJson(value: unknown, column: string): string {
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    const tooDeep = err instanceof RangeError;
    throw new EncodeError(column, "JSON value", tooDeep ? `${column}: nested too deeply to store` : `${column}: ${(err as Error).message}`);
  }
  // JSON text never holds a raw newline, return or tab, so without a backslash there is nothing to escape
  // and no \u0000 either: one scan for the common case instead of three (hot path: every row).
  if (json.indexOf("\\") === -1) return json;
  // jsonb refuses the \u0000 escape; JSON.stringify writes a NUL character as exactly that.
  if (json.indexOf("\\u0000") !== -1) {
    throw new EncodeError(column, "JSON without NUL characters", `${column}: jsonb cannot hold a \\u0000 character`);
  }
  return escapeCopyText(json);
}

function encodeTimestamp(value: unknown, column: string): string {
  if (typeof value === "number") {
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) throw new EncodeError(column, "epoch milliseconds", `${column}: not a valid time`);
    return d.toISOString();
  }
  return encodeText(value, column);
}

function encodeNumber(value: unknown, column: string): string {
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new EncodeError(column, "finite number", `${column}: not a finite number`);
    return String(value);
  }
  if (typeof value === "bigint") return value.toString();
  return encodeText(value, column);
}

const ENCODERS: Record<ColumnType, (value: unknown, column: string) => string> = {
  text: encodeText,
  uuid: encodeText,
  date: encodeText,
  jsonb: encodeJson,
  timestamptz: encodeTimestamp,
  bigint: encodeNumber,
  integer: encodeNumber,
  numeric: encodeNumber,
};

export type RowEncoder<R> = (record: R, ctx: RowContext) => string;

/** Builds the function that turns one validated record into one COPY line (with its newline). */
export function compileRowEncoder<R>(stream: StreamDefinition<R>): RowEncoder<R> {
  const columns: readonly ColumnSpec<R>[] = stream.columns;
  const encoders = columns.map((c) => ENCODERS[c.type]);
  const n = columns.length;
  // The row is joined from its pieces into one flat string rather than concatenated: `+=` builds a tree of
  // cons strings (about two dozen heap objects per row), and rows stay alive until their batch commits, so
  // every young-generation collection in between copied each tree again (measured in a worker simulation:
  // 5.4-5.8 -> 4.0-4.1 µs of CPU per event, GC time down ~40%).
  const pieces: string[] = new Array(2 * n).fill("");
  pieces[2 * n - 1] = "\n";
  for (let i = 1; i < n; i++) pieces[2 * i - 1] = "\t";
  return (record, ctx) => {
    for (let i = 0; i < n; i++) {
      const column = columns[i];
      const value = column.value(record, ctx);
      if (value === undefined || value === null) {
        if (!column.nullable) throw new EncodeError(column.name, "a value", `${column.name}: required`);
        pieces[2 * i] = "\\N";
      } else {
        pieces[2 * i] = encoders[i](value, column.name);
      }
    }
    return pieces.join("");
  };
}

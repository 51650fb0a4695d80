/**
 * The query string of a read (docs/http-api.md#reading-back) turned into what the SQL needs, or the 400
 * naming the parameter. Cursors are opaque to clients: base64url of the last row's sort key and the order
 * they were made for, so a cursor cannot be replayed against the other order.
 */
import type { ColumnType } from "../shared/stream-definition";

export type ReadOrder = "asc" | "desc";

export const DEFAULT_READ_LIMIT = 100;
export const MAX_READ_LIMIT = 1000;

/** The parameters every read takes; any other is a filter (records) or an error (dead letters). */
export const PAGING_PARAMS = ["since", "until", "limit", "cursor", "order"] as const;

export interface Paging {
  /** ISO-8601, inclusive. */
  since: string | null;
  /** ISO-8601, exclusive. */
  until: string | null;
  limit: number;
  order: ReadOrder;
  /** The sort key of the last row of the previous page, as text; null for the first page. */
  after: string[] | null;
}

export class ReadQueryError extends Error {
  constructor(
    /** The parameter at fault. */
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = "ReadQueryError";
  }
}

/** `?a=1&b=2` as pairs; a parameter given twice is an error (its meaning would be a guess). */
export function queryParams(query: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const [name, value] of new URLSearchParams(query)) {
    if (params.has(name)) throw new ReadQueryError(name, `${name}: given more than once`);
    params.set(name, value);
  }
  return params;
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

function timeParam(params: Map<string, string>, name: string): string | null {
  const value = params.get(name);
  if (value === undefined) return null;
  if (!ISO_TIME.test(value) || Number.isNaN(Date.parse(value))) {
    throw new ReadQueryError(name, `${name}: expected an ISO-8601 time such as 2026-12-01T00:00:00Z, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** since, until, limit, order and cursor, checked. `keyLength`: how many values a cursor of this read holds. */
export function pagingOf(params: Map<string, string>, keyLength: number): Paging {
  const limitText = params.get("limit");
  let limit = DEFAULT_READ_LIMIT;
  if (limitText !== undefined) {
    limit = /^\d{1,7}$/.test(limitText) ? Number(limitText) : Number.NaN;
    if (!(limit >= 1 && limit <= MAX_READ_LIMIT)) {
      throw new ReadQueryError("limit", `limit: expected an integer from 1 to ${MAX_READ_LIMIT}, got ${JSON.stringify(limitText)}`);
    }
  }
  const orderText = params.get("order") ?? "desc";
  if (orderText !== "asc" && orderText !== "desc") {
    throw new ReadQueryError("order", `order: expected "desc" (newest first, the default) or "asc", got ${JSON.stringify(orderText)}`);
  }
  const order: ReadOrder = orderText;
  const cursorText = params.get("cursor");
  return {
    since: timeParam(params, "since"),
    until: timeParam(params, "until"),
    limit,
    order,
    after: cursorText === undefined || cursorText === "" ? null : decodeCursor(cursorText, order, keyLength),
  };
}

export function encodeCursor(order: ReadOrder, key: readonly string[]): string {
  return Buffer.from(JSON.stringify({ o: order, k: key })).toString("base64url");
}

function decodeCursor(text: string, order: ReadOrder, keyLength: number): string[] {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    value = null;
  }
  const v = value as { o?: unknown; k?: unknown } | null;
  const key = v?.k;
  if (
    typeof v !== "object" ||
    v === null ||
    !Array.isArray(key) ||
    key.length !== keyLength ||
    !key.every((part) => typeof part === "string" && part.length <= 1024)
  ) {
    throw new ReadQueryError("cursor", "cursor: not a cursor of this read; pass next_cursor from the previous page unchanged");
  }
  if (v.o !== order) {
    throw new ReadQueryError("cursor", `cursor: made for order=${String(v.o)}; keep the order of the first page`);
  }
  return key as string[];
}

const VALUE_SHAPES: Partial<Record<ColumnType, { pattern: RegExp; expected: string }>> = {
  integer: { pattern: /^-?\d{1,10}$/, expected: "an integer" },
  bigint: { pattern: /^-?\d{1,19}$/, expected: "an integer" },
  numeric: { pattern: /^-?\d+(\.\d+)?$/, expected: "a decimal number" },
  date: { pattern: /^\d{4}-\d{2}-\d{2}$/, expected: "a date YYYY-MM-DD" },
  uuid: { pattern: /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i, expected: "a UUID" },
  timestamptz: { pattern: ISO_TIME, expected: "an ISO-8601 time" },
};

/** A filter value checked against its column's type (PostgreSQL would refuse it later with a vaguer error). */
export function filterValue(column: string, type: ColumnType, value: string): string {
  const shape = VALUE_SHAPES[type];
  if (shape && !shape.pattern.test(value)) {
    throw new ReadQueryError(column, `${column}: expected ${shape.expected}, got ${JSON.stringify(value)}`);
  }
  return value;
}

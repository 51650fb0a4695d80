import type { IValidation } from "typia";

/** PostgreSQL column types a stream may use; each has one COPY text encoding (workers/row-encoder.ts). */
export type ColumnType = "text" | "jsonb" | "timestamptz" | "bigint" | "integer" | "numeric" | "date" | "uuid";

/** Body formats a stream accepts. `text` is one record a line (line-format streams). */
export type BodyFormat = "json" | "ndjson" | "text";

export interface RowContext {
  /** Receive time of the request, ISO-8601: the default for optional event times. */
  receivedAt: string;
}

export interface ColumnSpec<R> {
  /** SQL column name: from this definition only, never from input. */
  name: string;
  type: ColumnType;
  nullable?: boolean;
  /** Extracts the column's value from a validated record. */
  value: (record: R, ctx: RowContext) => unknown;
}

export interface StreamDefinition<R = any> {
  name: string;
  table: string;
  description: string;
  formats: readonly BodyFormat[];
  /** typia-compiled validator of one record. */
  validate: (input: unknown) => IValidation<R>;
  columns: readonly ColumnSpec<R>[];
  /** Column holding the event time (the partition key of time-partitioned tables). */
  timeColumn?: string;
  /** Extra indexes, as column lists. */
  indexes: readonly (readonly string[])[];
  /** Range-partition the table by month on `timeColumn` (event tables that hold years of data). */
  partitioned: boolean;
  /**
   * Column whose value identifies an event: with deduplication on, a record whose id is already stored
   * is not stored again and is counted as a duplicate.
   */
  dedupKey?: string;
  /** Whether deduplication is on unless the configuration says otherwise. */
  dedupByDefault?: boolean;
  /** Primary key columns (line-format reference tables). */
  primaryKey?: readonly string[];
  foreignKeys?: readonly { columns: readonly string[]; references: { stream: string; columns: readonly string[] } }[];
  /** Line formats: the prefix that routes a line to this stream (`O` for `O|...`). */
  linePrefix?: string;
  /** Line formats: the entity name reported back for a line (`Order`). */
  entity?: string;
  /** Line formats: turns one line into the record the validator checks. */
  parseLine?: (line: string) => unknown;
  /** The value reported as `id` for a stored record (line formats). */
  recordId?: (record: R) => unknown;
}

/** Task stream name that routes each text line by its prefix to the stream with that `linePrefix`. */
export const LINE_ROUTER = "tpch";

/** Identity helper so a stream file gets its record type checked against its columns. */
export function defineStream<R>(definition: StreamDefinition<R>): StreamDefinition<R> {
  return definition;
}

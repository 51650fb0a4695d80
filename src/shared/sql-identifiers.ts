/**
 * SQL names: table, column and schema names come from configuration and stream definitions only, and are
 * still quoted so a name can never be read as SQL. Every name derived from a stream's table lives here, so
 * the schema (front thread) and the COPY statements (workers) agree on them.
 */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function qualifiedName(schema: string, name: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(name)}`;
}

export function copyStatement(schema: string, table: string, columns: readonly string[]): string {
  return `COPY ${qualifiedName(schema, table)} (${columns.map(quoteIdent).join(", ")}) FROM STDIN`;
}

/** The table of ids already stored, for a deduplicating stream. */
export function dedupTable(table: string): string {
  return `${table}_dedup`;
}

/** An upserting stream's staging table: a temporary table of each worker connection (docs/storage.md#upserts). */
export function stageTable(table: string): string {
  return `ingest_stage_${table}`.slice(0, 63);
}

/** The staging table's extra column: each row's 1-based position in the batch. */
export const STAGE_ROW_COLUMN = "__row";

export const BATCHES_TABLE = "ingest_batches";
export const DEAD_LETTERS_TABLE = "ingest_dead_letters";
/** One row per pull source: its watermark, schedule and last run (docs/sources.md#state). */
export const SOURCES_TABLE = "ingest_sources";
/** One row per (stream, producer): the producer session's epoch and last committed frame seq. */
export const PRODUCERS_TABLE = "ingest_producers";

export const BATCH_COLUMNS = [
  "batch_id",
  "request_id",
  "stream",
  "status",
  "received",
  "accepted",
  "rejected",
  "duplicates",
  "created_at",
  "committed_at",
] as const;

export const DEAD_LETTER_COLUMNS = ["stream", "source", "batch_id", "record_index", "line", "raw", "errors", "received_at"] as const;

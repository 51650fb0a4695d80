/**
 * The SQL each stream's rows are committed with, built once per worker from the stream definitions.
 * Plain streams COPY straight into their table. Deduplicating streams COPY into a temporary staging table
 * and one statement moves the rows whose id is new into the table, recording the ids; the unique index
 * on the id table makes concurrent batches on other workers (and other daemons) agree on who stored it.
 */
import type { StreamDefinition } from "../src/stream-definition";
import {
  BATCHES_TABLE,
  BATCH_COLUMNS,
  DEAD_LETTERS_TABLE,
  DEAD_LETTER_COLUMNS,
  copyStatement,
  dedupTable,
  qualifiedName,
  quoteIdent,
  stagingTable,
} from "../src/sql-identifiers";

export interface CommitTarget {
  stream: string;
  /** Position in the transaction: a table is written after the tables it references. */
  order: number;
  copySql: string;
  /**
   * Dedup only: moves new rows from staging into the table; returns `_row` of each staged row it did not
   * store (a duplicate): usually none, so the worker does not parse a result row per stored row.
   */
  mergeSql: string | null;
}

export function commitTarget(schema: string, stream: StreamDefinition, order: number, dedup: boolean): CommitTarget {
  const columns = stream.columns.map((c) => c.name);
  if (!dedup || !stream.dedupKey) {
    return { stream: stream.name, order, copySql: copyStatement(schema, stream.table, columns), mergeSql: null };
  }
  const key = quoteIdent(stream.dedupKey);
  // The id table keeps the event time (when the stream has one) so retention can forget old ids.
  const time = stream.timeColumn ? `, ${quoteIdent(stream.timeColumn)}` : "";
  const stage = `pg_temp.${quoteIdent(stagingTable(stream.table))}`;
  const list = columns.map(quoteIdent).join(", ");
  const mergeSql = `WITH fresh AS (
  INSERT INTO ${qualifiedName(schema, dedupTable(stream.table))} (${key}${time})
  SELECT DISTINCT ON (${key}) ${key}${time} FROM ${stage} ORDER BY ${key}, _row
  ON CONFLICT (${key}) DO NOTHING
  RETURNING ${key}
), chosen AS (
  SELECT DISTINCT ON (s.${key}) s.* FROM ${stage} s JOIN fresh f ON f.${key} = s.${key} ORDER BY s.${key}, s._row
), stored AS (
  INSERT INTO ${qualifiedName(schema, stream.table)} (${list}) SELECT ${list} FROM chosen
)
SELECT s._row FROM ${stage} s WHERE NOT EXISTS (SELECT 1 FROM chosen c WHERE c._row = s._row)`;
  return {
    stream: stream.name,
    order,
    copySql: `COPY ${stage} (${list}, _row) FROM STDIN`,
    mergeSql,
  };
}

/** Per-connection setup: the staging tables of the deduplicating streams. */
export function stagingSetup(schema: string, streams: readonly StreamDefinition[], dedup: (s: StreamDefinition) => boolean): string[] {
  return streams
    .filter((s) => dedup(s) && s.dedupKey)
    .map(
      (s) =>
        `CREATE TEMP TABLE IF NOT EXISTS ${quoteIdent(stagingTable(s.table))} ` +
        `(LIKE ${qualifiedName(schema, s.table)} INCLUDING DEFAULTS, _row integer NOT NULL) ON COMMIT DELETE ROWS`,
    );
}

export function batchesCopySql(schema: string): string {
  return copyStatement(schema, BATCHES_TABLE, BATCH_COLUMNS);
}

export function deadLettersCopySql(schema: string): string {
  return copyStatement(schema, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS);
}

/**
 * The SQL each stream's rows are committed with, built once per worker from the stream definitions.
 * Every stream COPYs straight into its table. A deduplicating stream first records the batch's ids in its
 * `<table>_dedup` table (primary key on the id) with ON CONFLICT DO NOTHING, and only the rows whose id
 * that statement inserted are copied. The unique index makes concurrent batches of other workers (and
 * other daemons) agree on who stored an id; within one statement the first occurrence wins.
 */
import type { ColumnType, StreamDefinition } from "../src/stream-definition";
import {
  BATCHES_TABLE,
  BATCH_COLUMNS,
  DEAD_LETTERS_TABLE,
  DEAD_LETTER_COLUMNS,
  copyStatement,
  dedupTable,
  qualifiedName,
  quoteIdent,
} from "../src/sql-identifiers";

export interface DedupSql {
  /**
   * `$1` ids, `$2` event times (when the stream has a time column), in row order: returns `n`, the
   * 1-based position of each row it did NOT record (a duplicate, or a later copy of an id in the batch).
   * Usually none, so the worker parses no result row per stored row.
   */
  claim: string;
  /** `$1` ids: forgets ids whose rows PostgreSQL refused after all (row isolation). */
  release: string;
  /** The time column's values are sent along so retention can forget old ids. */
  withTime: boolean;
}

export interface CommitTarget {
  stream: string;
  /** Position in the transaction: a table is written after the tables it references. */
  order: number;
  copySql: string;
  dedup: DedupSql | null;
}

const ARRAY_TYPES: Partial<Record<ColumnType, string>> = { text: "text[]", uuid: "uuid[]", bigint: "bigint[]", integer: "integer[]" };

export function commitTarget(schema: string, stream: StreamDefinition, order: number, dedup: boolean): CommitTarget {
  const copySql = copyStatement(schema, stream.table, stream.columns.map((c) => c.name));
  const keyColumn = stream.columns.find((c) => c.name === stream.dedupKey);
  if (!dedup || !keyColumn) return { stream: stream.name, order, copySql, dedup: null };
  const ids = qualifiedName(schema, dedupTable(stream.table));
  const key = quoteIdent(keyColumn.name);
  const keyArray = ARRAY_TYPES[keyColumn.type] ?? "text[]";
  const withTime = stream.timeColumn !== undefined;
  const time = withTime ? quoteIdent(stream.timeColumn!) : "";
  const input = withTime
    ? `unnest($1::${keyArray}, $2::timestamptz[]) WITH ORDINALITY AS u(k, t, n)`
    : `unnest($1::${keyArray}) WITH ORDINALITY AS u(k, n)`;
  const claim = `WITH input AS (SELECT * FROM ${input}),
claimed AS (
  INSERT INTO ${ids} (${key}${withTime ? `, ${time}` : ""}) SELECT k${withTime ? ", t" : ""} FROM input ORDER BY n
  ON CONFLICT (${key}) DO NOTHING
  RETURNING ${key}
),
firsts AS (SELECT min(input.n) AS n FROM input JOIN claimed ON claimed.${key} = input.k GROUP BY input.k)
SELECT input.n::integer AS n FROM input WHERE NOT EXISTS (SELECT 1 FROM firsts WHERE firsts.n = input.n)`;
  const release = `DELETE FROM ${ids} WHERE ${key} = ANY($1::${keyArray})`;
  return { stream: stream.name, order, copySql, dedup: { claim, release, withTime } };
}

export function batchesCopySql(schema: string): string {
  return copyStatement(schema, BATCHES_TABLE, BATCH_COLUMNS);
}

export function deadLettersCopySql(schema: string): string {
  return copyStatement(schema, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS);
}

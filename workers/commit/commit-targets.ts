/**
 * The SQL each stream's rows are committed with, built once per worker from the stream definitions.
 * Every stream COPYs straight into its table. A deduplicating stream first records the batch's ids in its
 * `<table>_dedup` table (primary key on the id) through its claim function (src/shared/dedup-sql.ts), and
 * only the rows whose id that call recorded are copied. The unique index makes concurrent batches of other
 * workers (and other daemons) agree on who stored an id; within one batch the first occurrence wins.
 */
import { dedupClaimFunction, dedupShape } from "../../src/shared/dedup-sql";
import type { StreamDefinition } from "../../src/shared/stream-definition";
import {
  BATCHES_TABLE,
  BATCH_COLUMNS,
  DEAD_LETTERS_TABLE,
  DEAD_LETTER_COLUMNS,
  copyStatement,
  qualifiedName,
} from "../../src/shared/sql-identifiers";

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

export function commitTarget(schema: string, stream: StreamDefinition, order: number, dedup: boolean): CommitTarget {
  const copySql = copyStatement(
    schema,
    stream.table,
    stream.columns.map((c) => c.name),
  );
  const d = dedup ? dedupShape(schema, stream) : null;
  if (d === null) return { stream: stream.name, order, copySql, dedup: null };
  const fn = qualifiedName(schema, dedupClaimFunction(stream.table));
  const claim = d.withTime
    ? `SELECT n FROM ${fn}($1::${d.keyArray}, $2::timestamptz[]) AS n`
    : `SELECT n FROM ${fn}($1::${d.keyArray}) AS n`;
  const release = `DELETE FROM ${d.ids} WHERE ${d.key} = ANY($1::${d.keyArray})`;
  return { stream: stream.name, order, copySql, dedup: { claim, release, withTime: d.withTime } };
}

/** Every stream's target, in config/streams order (the index a compiled stream's `order` gives). */
export function commitTargets(schema: string, streams: readonly StreamDefinition[], dedupStreams: readonly string[]): CommitTarget[] {
  const dedup = new Set(dedupStreams);
  return streams.map((stream, order) => commitTarget(schema, stream, order, dedup.has(stream.name)));
}

export function batchesCopySql(schema: string): string {
  return copyStatement(schema, BATCHES_TABLE, BATCH_COLUMNS);
}

export function deadLettersCopySql(schema: string): string {
  return copyStatement(schema, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS);
}

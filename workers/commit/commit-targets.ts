/**
 * The SQL each stream's rows are committed with, built once per worker from the stream definitions.
 * Every stream COPYs straight into its table. A deduplicating stream first records the batch's ids in its
 * `<table>_dedup` table (primary key on the id) through its claim function (`dedupClaimFunctionDdl`), and
 * only the rows whose id that call recorded are copied. The unique index makes concurrent batches of other
 * workers (and other daemons) agree on who stored an id; within one batch the first occurrence wins.
 */
import type { ColumnType, StreamDefinition } from "../../src/shared/stream-definition";
import {
  BATCHES_TABLE,
  BATCH_COLUMNS,
  DEAD_LETTERS_TABLE,
  DEAD_LETTER_COLUMNS,
  copyStatement,
  dedupTable,
  qualifiedName,
  quoteIdent,
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

const ARRAY_TYPES: Partial<Record<ColumnType, string>> = { text: "text[]", uuid: "uuid[]", bigint: "bigint[]", integer: "integer[]" };

/** The function that claims a batch's ids for a deduplicating stream (created by src/storage/schema.ts). */
export function dedupClaimFunction(table: string): string {
  return `${dedupTable(table)}_claim`;
}

interface DedupShape {
  /** Qualified id table. */
  ids: string;
  /** Quoted key and time columns of the id table (time "" without one). */
  key: string;
  time: string;
  keyArray: string;
  withTime: boolean;
}

function dedupShape(schema: string, stream: StreamDefinition): DedupShape | null {
  const keyColumn = stream.columns.find((c) => c.name === stream.dedupKey);
  if (!keyColumn) return null;
  const withTime = stream.timeColumn !== undefined;
  return {
    ids: qualifiedName(schema, dedupTable(stream.table)),
    key: quoteIdent(keyColumn.name),
    time: withTime ? quoteIdent(stream.timeColumn!) : "",
    keyArray: ARRAY_TYPES[keyColumn.type] ?? "text[]",
    withTime,
  };
}

/**
 * `CREATE OR REPLACE FUNCTION` of the stream's claim function, or null when the stream has no dedup key.
 *
 * The common batch holds no id that is already stored and none twice: a plain INSERT records them all.
 * Measured on PostgreSQL 18 (5,000-id batches): ~3 µs of backend CPU per id, against ~7-10 µs for
 * INSERT ... ON CONFLICT DO NOTHING, whose speculative insertion takes a lock and writes an extra WAL
 * record per row. Any id already stored (committed, or inserted by a concurrent transaction that then
 * commits: the INSERT waits for it) makes the plain INSERT fail on the unique index; its subtransaction is
 * rolled back and the batch is claimed with ON CONFLICT DO NOTHING instead, where the first copy of an id
 * within the batch wins. Either way the unique index decides who stored an id.
 *
 * Both paths insert in id order: a transaction only ever waits for another's uncommitted id while holding
 * smaller ids itself, so two claims can never wait for each other (no deadlock between workers or
 * daemons whose batches share ids in different orders).
 *
 * Returns the 1-based positions of the rows whose id it did NOT record.
 */
export function dedupClaimFunctionDdl(schema: string, stream: StreamDefinition): string | null {
  const d = dedupShape(schema, stream);
  if (d === null) return null;
  const fn = qualifiedName(schema, dedupClaimFunction(stream.table));
  const args = d.withTime ? `claim_keys ${d.keyArray}, claim_times timestamptz[]` : `claim_keys ${d.keyArray}`;
  const input = d.withTime ? "unnest(claim_keys, claim_times)" : "unnest(claim_keys)";
  const columns = d.withTime ? `${d.key}, ${d.time}` : d.key;
  const values = d.withTime ? "claim_k, claim_t" : "claim_k";
  const aliases = d.withTime ? "claim_k, claim_t, claim_n" : "claim_k, claim_n";
  return `CREATE OR REPLACE FUNCTION ${fn}(${args}) RETURNS SETOF integer
LANGUAGE plpgsql AS $claim$
#variable_conflict use_column
BEGIN
  BEGIN
    INSERT INTO ${d.ids} (${columns}) SELECT ${values} FROM ${input} AS claim_u(${values}) ORDER BY claim_k;
    RETURN;
  EXCEPTION WHEN unique_violation THEN
    -- Some id is stored already (or twice in the batch): claim row by row below.
  END;
  RETURN QUERY
  WITH claim_input AS (SELECT * FROM ${input} WITH ORDINALITY AS claim_u(${aliases})),
  firsts AS (SELECT DISTINCT ON (claim_k) ${values}, claim_n FROM claim_input ORDER BY claim_k, claim_n),
  claimed AS (
    INSERT INTO ${d.ids} AS claim_ids (${columns}) SELECT ${values} FROM firsts ORDER BY claim_k
    ON CONFLICT (${d.key}) DO NOTHING
    RETURNING claim_ids.${d.key} AS claim_k
  )
  SELECT claim_input.claim_n::integer FROM claim_input
  WHERE NOT EXISTS (
    SELECT 1 FROM firsts JOIN claimed ON claimed.claim_k = firsts.claim_k WHERE firsts.claim_n = claim_input.claim_n
  );
END
$claim$`;
}

export function commitTarget(schema: string, stream: StreamDefinition, order: number, dedup: boolean): CommitTarget {
  const copySql = copyStatement(schema, stream.table, stream.columns.map((c) => c.name));
  const d = dedup ? dedupShape(schema, stream) : null;
  if (d === null) return { stream: stream.name, order, copySql, dedup: null };
  const fn = qualifiedName(schema, dedupClaimFunction(stream.table));
  const claim = d.withTime
    ? `SELECT n FROM ${fn}($1::${d.keyArray}, $2::timestamptz[]) AS n`
    : `SELECT n FROM ${fn}($1::${d.keyArray}) AS n`;
  const release = `DELETE FROM ${d.ids} WHERE ${d.key} = ANY($1::${d.keyArray})`;
  return { stream: stream.name, order, copySql, dedup: { claim, release, withTime: d.withTime } };
}

export function batchesCopySql(schema: string): string {
  return copyStatement(schema, BATCHES_TABLE, BATCH_COLUMNS);
}

export function deadLettersCopySql(schema: string): string {
  return copyStatement(schema, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS);
}

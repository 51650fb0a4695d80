/**
 * The SQL each stream's rows are committed with, built once per worker from the stream definitions.
 * Every stream COPYs straight into its table. A deduplicating stream first records the batch's ids in its id
 * state (`<table>_dedup`, partitioned by generation) through its claim function
 * (src/shared/dedup-sql.ts), and only the rows whose id that call recorded are copied. A unique index makes
 * concurrent batches of other workers (and other daemons) agree on who stored an id; within one batch the
 * first occurrence wins. See docs/storage.md#deduplication.
 */
import { DEDUP_GEN_COLUMN, DEDUP_KEY_COLUMN, dedupHitsProbeSql, dedupShape } from "../../src/shared/dedup-sql";
import type { StreamDefinition } from "../../src/shared/stream-definition";
import { IdFilters } from "./id-filters";
import type { ClaimSql } from "./id-claim";
import {
  BATCHES_TABLE,
  BATCH_COLUMNS,
  DEAD_LETTERS_TABLE,
  DEAD_LETTER_COLUMNS,
  copyStatement,
  qualifiedName,
  quoteIdent,
  STAGE_ROW_COLUMN,
  stageTable,
} from "../../src/shared/sql-identifiers";

export interface DedupSql extends ClaimSql {
  /** `$1` keys: forgets ids whose rows PostgreSQL refused after all (row isolation), in the same transaction. */
  release: string;
  /** This worker's copy of the sealed generations' filters. */
  filters: IdFilters;
}

/**
 * An upserting stream (`onConflict: "update"`, docs/storage.md#upserts): COPY cannot upsert, so its rows are
 * copied into a temporary staging table and merged into the table with INSERT ... ON CONFLICT, in the batch's
 * transaction.
 */
export interface UpsertSql {
  /** Creates this connection's staging table if it has none yet (inside the transaction: cheap when it exists). */
  createStage: string;
  /** COPY into the staging table; each row is prefixed with its 1-based position in the batch. */
  stageCopySql: string;
  /**
   * Merges the staged rows (the last of each key in the batch wins) and empties the stage; returns `n`, the
   * position of each row that was inserted or changed a stored row. The others are duplicates.
   */
  merge: string;
  clearStage: string;
}

export interface CommitTarget {
  stream: string;
  /** Position in the transaction: a table is written after the tables it references. */
  order: number;
  copySql: string;
  dedup: DedupSql | null;
  upsert: UpsertSql | null;
}

export function upsertSql(schema: string, stream: StreamDefinition): UpsertSql {
  const key = stream.primaryKey ?? [];
  if (key.length === 0) throw new Error(`stream ${stream.name}: onConflict "update" needs a primaryKey`);
  const table = qualifiedName(schema, stream.table);
  const stage = `pg_temp.${quoteIdent(stageTable(stream.table))}`;
  const row = quoteIdent(STAGE_ROW_COLUMN);
  const columns = stream.columns.map((c) => quoteIdent(c.name));
  const keys = key.map(quoteIdent);
  const rest = stream.columns.filter((c) => !key.includes(c.name)).map((c) => quoteIdent(c.name));
  // ingested_at says when the stored version arrived: reads by time find changed rows. Rows go in key order,
  // so two workers' batches upserting the same keys lock them in the same order (no deadlock).
  const action =
    rest.length === 0
      ? "DO NOTHING"
      : `DO UPDATE SET ${rest.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}, "ingested_at" = now()
         WHERE (${rest.map((c) => `t.${c}`).join(", ")}) IS DISTINCT FROM (${rest.map((c) => `EXCLUDED.${c}`).join(", ")})`;
  return {
    createStage: `CREATE TEMP TABLE IF NOT EXISTS ${quoteIdent(stageTable(stream.table))} (${row} integer NOT NULL, LIKE ${table} INCLUDING DEFAULTS)`,
    stageCopySql: `COPY ${stage} (${[row, ...columns].join(", ")}) FROM STDIN`,
    merge: `WITH src AS (
        SELECT DISTINCT ON (${keys.join(", ")}) * FROM ${stage} ORDER BY ${keys.join(", ")}, ${row} DESC
      ), merged AS (
        INSERT INTO ${table} AS t (${columns.join(", ")}) SELECT ${columns.join(", ")} FROM src ORDER BY ${keys.join(", ")}
        ON CONFLICT (${keys.join(", ")}) ${action}
        RETURNING ${keys.map((k) => `t.${k}`).join(", ")}
      )
      SELECT src.${row} AS n FROM src JOIN merged USING (${keys.join(", ")})`,
    clearStage: `DELETE FROM ${stage}`,
  };
}

export function commitTarget(schema: string, stream: StreamDefinition, order: number, dedup: boolean): CommitTarget {
  const copySql = copyStatement(
    schema,
    stream.table,
    stream.columns.map((c) => c.name),
  );
  const upsert = stream.onConflict === "update" ? upsertSql(schema, stream) : null;
  const d = dedup ? dedupShape(schema, stream) : null;
  if (d === null) return { stream: stream.name, order, copySql, dedup: null, upsert };
  const claim = `SELECT n FROM ${d.claim}($1::uuid[], $2::uuid[], $3::integer[], $4::integer[]) AS n`;
  // Spelled out, not bound: the call travels in one Query with the BEGIN before it (id-claim.ts). Keys are
  // canonical UUIDs (src/shared/dedup-key.ts) and generations integers, so the literals need no escaping.
  const arrays = (maybe: readonly string[], gens: readonly number[], covered: readonly number[]) =>
    `'{${maybe.join(",")}}'::uuid[], '{${gens.join(",")}}'::integer[], '{${covered.join(",")}}'::integer[]`;
  const probeCall = (maybe: readonly string[], gens: readonly number[], covered: readonly number[]) =>
    `SELECT * FROM ${d.probe}(${arrays(maybe, gens, covered)})`;
  const enterCall = (expectedGen: number, maybe: readonly string[], gens: readonly number[], covered: readonly number[]) =>
    `SELECT ${d.enter}(${expectedGen}, ${arrays(maybe, gens, covered)})`;
  // This transaction's claim wrote its ids into the open generation, which cannot change before it ends
  // (the claim holds the rotation lock shared): the DELETE touches that one partition only.
  const release = `DELETE FROM ${d.ids} WHERE ${quoteIdent(DEDUP_KEY_COLUMN)} = ANY($1::uuid[])
    AND ${quoteIdent(DEDUP_GEN_COLUMN)} = (SELECT gen FROM ${d.slots} WHERE opened_at IS NOT NULL AND sealed_at IS NULL)`;
  // By position: a prepared statement's name is cut at 63 bytes, a table's name need not be.
  const hits = { name: `ingestd-dedup-hits-${order}`, text: dedupHitsProbeSql(d), pruned: dedupHitsProbeSql(d, true) };
  return {
    stream: stream.name,
    order,
    copySql,
    dedup: { claim, probeCall, enterCall, openGeneration: null, hits, release, filters: new IdFilters(d.slots) },
    upsert,
  };
}

/** Every stream's target, in config/streams order (the index a compiled stream's `order` gives). */
export function commitTargets(schema: string, streams: readonly StreamDefinition[], dedupStreams: readonly string[]): CommitTarget[] {
  const dedup = new Set(dedupStreams);
  return streams.map((stream, order) => commitTarget(schema, stream, order, dedup.has(stream.name)));
}

export function batchesCopySql(schema: string): string {
  return copyStatement(schema, BATCHES_TABLE, BATCH_COLUMNS);
}

/** Marks replayed dead letters (docs/http-api.md#replaying-dead-letters), in the transaction of their replay. */
export function markReplayedSql(schema: string): string {
  return `UPDATE ${qualifiedName(schema, DEAD_LETTERS_TABLE)} SET replayed_at = now() WHERE id = ANY($1::bigint[])`;
}

export function deadLettersCopySql(schema: string): string {
  return copyStatement(schema, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS);
}

/**
 * Reading `ingest_dead_letters` back and claiming rows for replay (docs/http-api.md#dead-letters). A replay
 * marks the rows it takes (`replayed_at`) in the same statement that reads them, with SKIP LOCKED, so two
 * replays at once, or one run twice, never submit a dead letter twice.
 */
import { DEAD_LETTERS_TABLE, qualifiedName } from "../shared/sql-identifiers";
import { encodeCursor, pagingOf, ReadQueryError, type Paging } from "./read-query";
import type { ReadPool } from "./read-pool";
import type { ReadPage } from "./record-reads";

/** Dead letters one replay request takes at most; the answer says when more are left. */
export const MAX_REPLAY = 1000;

const DEAD_LETTER_PARAMS = ["stream", "since", "until", "limit", "cursor", "order"];

export interface DeadLetterQuery {
  /** The stream asked for, or null for every stream the caller may read. */
  stream: string | null;
  paging: Paging;
}

export function deadLetterQuery(params: Map<string, string>): DeadLetterQuery {
  for (const name of params.keys()) {
    if (!DEAD_LETTER_PARAMS.includes(name)) {
      throw new ReadQueryError(name, `${name}: unknown parameter; dead letters take ${DEAD_LETTER_PARAMS.join(", ")}`);
    }
  }
  const stream = params.get("stream");
  return { stream: stream === undefined || stream === "" ? null : stream, paging: pagingOf(params, 2) };
}

/**
 * One page of dead letters, ordered by (received_at, id). `streams`: those the caller may read (null: all).
 */
export async function readDeadLetters(
  pool: ReadPool,
  schema: string,
  query: DeadLetterQuery,
  streams: readonly string[] | null,
): Promise<ReadPage> {
  const { paging } = query;
  const values: unknown[] = [];
  const param = (value: unknown, type: string) => {
    values.push(value);
    return `$${values.length}::${type}`;
  };
  const where: string[] = [];
  if (query.stream !== null) where.push(`stream = ${param(query.stream, "text")}`);
  if (streams !== null) where.push(`stream = ANY(${param(streams, "text[]")})`);
  if (paging.since !== null) where.push(`received_at >= ${param(paging.since, "timestamptz")}`);
  if (paging.until !== null) where.push(`received_at < ${param(paging.until, "timestamptz")}`);
  if (paging.after !== null) {
    const op = paging.order === "asc" ? ">" : "<";
    where.push(`(received_at, id) ${op} (${param(paging.after[0], "timestamptz")}, ${param(paging.after[1], "bigint")})`);
  }
  const direction = paging.order === "asc" ? "ASC" : "DESC";
  const text =
    `SELECT json_build_object('id', id, 'stream', stream, 'source', source, 'batch_id', batch_id, ` +
    `'record_index', record_index, 'line', line, 'raw', raw, 'errors', errors, 'received_at', received_at, ` +
    `'replayed_at', replayed_at)::text AS record, ARRAY[received_at::text, id::text] AS sort_key ` +
    `FROM ${qualifiedName(schema, DEAD_LETTERS_TABLE)}` +
    (where.length > 0 ? ` WHERE ${where.join(" AND ")}` : "") +
    ` ORDER BY received_at ${direction}, id ${direction} LIMIT ${paging.limit + 1}`;
  const { rows } = await pool.query<{ record: string; sort_key: string[] }>(text, values);
  const more = rows.length > paging.limit;
  const page = more ? rows.slice(0, paging.limit) : rows;
  return { records: page.map((r) => r.record), nextCursor: more ? encodeCursor(paging.order, page[page.length - 1].sort_key) : null };
}

/** Which dead letters of a stream a replay takes: by id, or every one received since a time. */
export type ReplaySelection = { ids: string[] } | { since: string };

export interface ClaimedLetter {
  id: string;
  raw: string;
}

/**
 * Marks up to MAX_REPLAY not yet replayed dead letters of `stream` as replayed and returns them, oldest
 * first, with whether more are left. Rows another replay holds are skipped.
 */
export async function claimDeadLetters(
  pool: ReadPool,
  schema: string,
  stream: string,
  selection: ReplaySelection,
): Promise<{ letters: ClaimedLetter[]; more: boolean }> {
  const table = qualifiedName(schema, DEAD_LETTERS_TABLE);
  const which = "ids" in selection ? "id = ANY($2::bigint[])" : "received_at >= $2::timestamptz";
  const value = "ids" in selection ? selection.ids : selection.since;
  const { rows } = await pool.query<{ id: string; raw: string; more: boolean }>(
    `WITH picked AS (
       SELECT id, received_at FROM ${table}
        WHERE stream = $1 AND replayed_at IS NULL AND ${which}
        ORDER BY received_at, id LIMIT ${MAX_REPLAY + 1} FOR UPDATE SKIP LOCKED
     ), marked AS (
       UPDATE ${table} d SET replayed_at = now() FROM (SELECT * FROM picked ORDER BY received_at, id LIMIT ${MAX_REPLAY}) p
        WHERE d.id = p.id AND d.received_at = p.received_at
        RETURNING d.id, d.raw, d.received_at
     )
     SELECT id::text, raw, (SELECT count(*) FROM picked) > ${MAX_REPLAY} AS more FROM marked ORDER BY received_at, id`,
    [stream, value],
  );
  return { letters: rows.map((r) => ({ id: r.id, raw: r.raw })), more: rows.length > 0 && rows[0].more };
}

/** Gives claimed dead letters back (their replay was not committed: the database went away). */
export async function releaseDeadLetters(pool: ReadPool, schema: string, ids: readonly string[]): Promise<void> {
  if (ids.length === 0) return;
  await pool.query(`UPDATE ${qualifiedName(schema, DEAD_LETTERS_TABLE)} SET replayed_at = NULL WHERE id = ANY($1::bigint[])`, [ids]);
}

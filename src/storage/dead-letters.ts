/**
 * Reading `ingest_dead_letters` back, and the dead letters a replay takes (docs/http-api.md#dead-letters).
 * A replay holds its stream's advisory lock, so two never submit the same dead letter at once; each dead
 * letter is marked replayed (`replayed_at`) in the transaction that commits its replay, so it is stored once.
 */
import type pg from "pg";
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

export interface PendingLetter {
  id: string;
  raw: string;
}

/**
 * Holds the replay of `stream` on this connection (an advisory lock, released with `endReplay` or when the
 * connection ends): one replay per stream at a time across daemons. False when another one runs.
 */
export async function beginReplay(client: pg.ClientBase, stream: string): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(hashtext('ingestd.replay'), hashtext($1)) AS ok`, [
    stream,
  ]);
  return rows[0].ok;
}

export async function endReplay(client: pg.ClientBase, stream: string): Promise<void> {
  await client.query(`SELECT pg_advisory_unlock(hashtext('ingestd.replay'), hashtext($1))`, [stream]);
}

/**
 * Up to MAX_REPLAY dead letters of `stream` not yet replayed, oldest first, and whether more are left.
 * They are marked replayed by the transaction that commits their replay (workers/commit/group-commit.ts),
 * so what is read here and not committed stays replayable.
 */
export async function pendingDeadLetters(
  client: pg.ClientBase,
  schema: string,
  stream: string,
  selection: ReplaySelection,
): Promise<{ letters: PendingLetter[]; more: boolean }> {
  const which = "ids" in selection ? "id = ANY($2::bigint[])" : "received_at >= $2::timestamptz";
  const value = "ids" in selection ? selection.ids : selection.since;
  const { rows } = await client.query<{ id: string; raw: string }>(
    `SELECT id::text, raw FROM ${qualifiedName(schema, DEAD_LETTERS_TABLE)}
      WHERE stream = $1 AND replayed_at IS NULL AND ${which}
      ORDER BY received_at, id LIMIT ${MAX_REPLAY + 1}`,
    [stream, value],
  );
  return { letters: rows.slice(0, MAX_REPLAY), more: rows.length > MAX_REPLAY };
}

/**
 * Filters' bytes out of PostgreSQL by binary COPY (PostgreSQL's COPY docs, "Binary Format"): raw bytes, where
 * a bytea in a query result arrives as hex text, twice the bytes, then decoded (docs/storage.md#filter-memory).
 */
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { DEDUP_FILTER_IDENT } from "../shared/dedup-sql";
import { filterFrom, type IdStateFilter } from "../shared/id-state-filter";

/** A binary COPY's signature, flags and header-extension length. */
export const COPY_HEADER_BYTES = 19;

/** Where a binary COPY's first row starts in `data` (at least COPY_HEADER_BYTES long): any header extension is skipped. */
export function binaryCopyRowsAt(data: Buffer): number {
  return COPY_HEADER_BYTES + data.readUInt32BE(COPY_HEADER_BYTES - 4);
}

/** Bytes of a filter read per COPY: a group's filter is up to tens of MiB, never held twice whole. */
const LOAD_CHUNK_BYTES = 1 << 20;

/**
 * One filter's bytes into shared memory (where the front publishes them to the workers), LOAD_CHUNK_BYTES at a
 * time, each slice by a binary COPY: measured ~1.3 s of the front thread's CPU for 60 MiB of filters as hex
 * text, 0.66 s so. `table` and `column` name the row (`column` = `id`, an integer of the slots or groups
 * table). Null: gone meanwhile. `reuse`: memory of that size to fill instead of a new buffer, if it has some.
 * `field`: the quoted column holding it (a sealed group's filter is in DEDUP_SEALED_IDENT).
 */
export async function loadFilter(
  client: pg.ClientBase,
  table: string,
  column: "gen" | "grp",
  id: number,
  reuse?: (bytes: number) => SharedArrayBuffer | undefined,
  field = DEDUP_FILTER_IDENT,
): Promise<IdStateFilter | null> {
  if (!Number.isSafeInteger(id)) throw new Error(`${table}: ${column} ${id} is not an integer`);
  const size = await client.query<{ n: number | null }>(`SELECT octet_length(${field}) AS n FROM ${table} WHERE ${column} = $1`, [id]);
  const bytes = size.rows[0]?.n ?? null;
  if (bytes === null) return null;
  const words = reuse?.(bytes) ?? new SharedArrayBuffer(bytes);
  const into = new Uint8Array(words);
  for (let at = 0; at < bytes; at += LOAD_CHUNK_BYTES) {
    // COPY takes no parameters: the id is an integer checked above, the names are quoted identifiers.
    const slice = await copyOutField(
      client,
      `COPY (SELECT substring(${field} FROM ${at + 1} FOR ${LOAD_CHUNK_BYTES}) FROM ${table} WHERE ${column} = ${id}) TO STDOUT (FORMAT binary)`,
    );
    if (slice === null || slice.length !== Math.min(LOAD_CHUNK_BYTES, bytes - at)) return null;
    into.set(slice, at);
  }
  return filterFrom(words);
}

/** The one field of the one row a binary COPY sends, or null when it sent no row or a null. */
async function copyOutField(client: pg.ClientBase, sql: string): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  for await (const chunk of client.query(copyTo(sql)) as AsyncIterable<Buffer>) chunks.push(chunk);
  const data = Buffer.concat(chunks);
  // The row: field count, length, bytes.
  const at = binaryCopyRowsAt(data);
  if (data.readInt16BE(at) !== 1) return null; // the trailer (-1): no row
  const length = data.readInt32BE(at + 2);
  return length < 0 ? null : data.subarray(at + 6, at + 6 + length);
}

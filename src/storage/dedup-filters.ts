/**
 * Builds the filter of each sealed generation of the id state (docs/storage.md#deduplication) and keeps
 * it in the slots table beside the generation, where the workers load it. A sealed generation is never
 * written again (the rotation waited for every claim into it), so its filter can be built at once. Each
 * filter is built once, by whichever daemon's maintenance gets there first.
 */
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { DedupFilter, DedupFilterFull } from "../shared/dedup-filter";
import { DEDUP_FILTER_IDENT as FILTER, DEDUP_KEY_COLUMN, dedupShape } from "../shared/dedup-sql";
import type { StreamDefinition } from "../shared/stream-definition";
import { quoteIdent } from "../shared/sql-identifiers";
import { locked } from "./partitions";

/** A binary COPY's signature, flags and header-extension length (PostgreSQL's COPY docs, "Binary Format"). */
export const COPY_HEADER_BYTES = 19;

/** Where a binary COPY's first row starts in `data` (at least COPY_HEADER_BYTES long): any header extension is skipped. */
export function binaryCopyRowsAt(data: Buffer): number {
  return COPY_HEADER_BYTES + data.readUInt32BE(COPY_HEADER_BYTES - 4);
}
/** One row of a binary COPY of the key column: field count (2 bytes), field length (4), the 16-byte uuid. */
const KEY_ROW_BYTES = 22;

/**
 * Adds every key of a partition to a filter, streaming them (a partition may hold millions) in binary: each
 * key is hashed from its 16 bytes, with no text to format in PostgreSQL nor to parse and slice here (every id
 * is read back twice, for its generation's filter and its group's; docs/storage.md#what-it-costs-measured).
 */
async function fillFilter(client: pg.ClientBase, part: string, filter: DedupFilter): Promise<void> {
  const stream = client.query(copyTo(`COPY (SELECT ${quoteIdent(DEDUP_KEY_COLUMN)} FROM ${part}) TO STDOUT (FORMAT binary)`));
  let rest: Buffer | null = null;
  let header = true;
  // A full filter (DedupFilterFull) is thrown once the COPY has ended: the connection stays usable.
  let full: DedupFilterFull | null = null;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    if (full !== null) continue;
    const data: Buffer = rest === null ? chunk : Buffer.concat([rest, chunk]);
    let at = 0;
    if (header) {
      if (data.length < COPY_HEADER_BYTES) {
        rest = data;
        continue;
      }
      at = binaryCopyRowsAt(data);
      header = false;
    }
    while (data.length - at >= KEY_ROW_BYTES && data.readInt16BE(at) === 1) {
      if (data.readInt32BE(at + 2) !== 16) throw new Error(`${part}: a key of ${data.readInt32BE(at + 2)} bytes in the id state`);
      try {
        filter.addBytes(data, at + 6);
      } catch (err) {
        if (!(err instanceof DedupFilterFull)) throw err;
        full = err;
        break;
      }
      at += KEY_ROW_BYTES;
    }
    rest = at < data.length ? data.subarray(at) : null;
  }
  if (full !== null) throw full;
  // What is left is the trailer: a field count of -1.
  if (rest === null || rest.length !== 2 || rest.readInt16BE(0) !== -1) throw new Error(`${part}: the binary COPY of its keys ended early`);
}

/**
 * The most keys the partitions can hold, from the size of their heaps: a COPY fills a page with rows of
 * (uuid, integer) of 52 bytes each (24-byte tuple header and 20 bytes of data aligned to 48, a 4-byte line
 * pointer), so this is never short and over by at most a page's rows, plus any dead rows (a claim rolled back).
 * It spares a count(*) that scanned each partition once more before the COPY that reads it (90 ms for 500,000
 * keys on an idle machine, 250 under load, for each generation and again for its group;
 * docs/storage.md#what-it-costs-measured). A partition dropped meanwhile counts for nothing.
 */
export async function keysAtMost(client: pg.ClientBase, parts: readonly string[]): Promise<number> {
  const { rows } = await client.query<{ keys: string }>(
    `SELECT coalesce(sum(pg_relation_size(to_regclass(p)) / b.size * ((b.size - 24) / 52)), 0)::bigint AS keys
       FROM unnest($1::text[]) AS p, (SELECT current_setting('block_size')::integer AS size) AS b`,
    [parts],
  );
  return Number(rows[0].keys);
}

/**
 * A filter of `keys` keys filled by `fill`. A cuckoo filter sized for its keys may, very rarely, find no room
 * for the last of them (DedupFilterFull); it is then discarded and built again a quarter larger.
 */
async function filterOf(keys: number, fill: (filter: DedupFilter) => Promise<void>): Promise<DedupFilter> {
  for (let room = keys; ; room = Math.ceil(room * 1.25)) {
    const filter = new DedupFilter(room);
    try {
      await fill(filter);
      return filter;
    } catch (err) {
      if (!(err instanceof DedupFilterFull)) throw err;
    }
  }
}

/** Builds the missing filters of the sealed generations of one stream's id state; returns their partitions. */
export async function buildDedupFilters(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ part: string; gen: number }>(
    `SELECT part, gen FROM ${d.slots} WHERE ${FILTER} IS NULL AND sealed_at IS NOT NULL ORDER BY gen DESC`,
  );
  const built: string[] = [];
  for (const slot of rows) {
    const done = await locked(client, async () => {
      const still = await client.query(`SELECT 1 FROM ${d.slots} WHERE gen = $1 AND ${FILTER} IS NULL`, [slot.gen]);
      if (still.rowCount === 0) return false; // another daemon built it, or the generation was dropped
      const filter = await filterOf(await keysAtMost(client, [slot.part]), (f) => fillFilter(client, slot.part, f));
      await client.query(`UPDATE ${d.slots} SET ${FILTER} = $2 WHERE gen = $1`, [slot.gen, filter.buffer()]);
      return true;
    });
    if (done) built.push(slot.part);
  }
  return built;
}

/**
 * Sealed generations per group filter. A worker checks every id against each filter it holds, one cache
 * miss each: one filter per group instead of one per generation keeps that to about
 * generations / GROUP_GENERATIONS + GROUP_GENERATIONS / 2 (docs/storage.md#deduplication).
 */
export const GROUP_GENERATIONS = 10;

/**
 * Builds a group filter over the keys of each run of GROUP_GENERATIONS sealed generations (oldest first) that
 * has a filter and no group yet; returns a label per group built. The keys are streamed without holding the
 * schema lock (sealed generations never change; one dropped meanwhile only leaves its keys in the filter, which
 * stays valid for the others), and the group is recorded under it unless another daemon recorded one first.
 */
export async function buildDedupGroupFilters(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const built: string[] = [];
  for (;;) {
    const { rows } = await client.query<{ gen: number; part: string }>(
      `SELECT s.gen, s.part FROM ${d.slots} s
        WHERE s.${FILTER} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${d.groups} g WHERE s.gen = ANY(g.gens))
        ORDER BY s.gen LIMIT ${GROUP_GENERATIONS}`,
    );
    if (rows.length < GROUP_GENERATIONS) return built;
    const room = await keysAtMost(
      client,
      rows.map((r) => r.part),
    );
    const filter = await filterOf(room, async (f) => {
      for (const r of rows) {
        try {
          await fillFilter(client, r.part, f);
        } catch (err) {
          if ((err as { code?: string }).code !== "42P01") throw err; // undefined_table: dropped past the window meanwhile
        }
      }
    });
    const gens = rows.map((r) => r.gen);
    const done = await locked(client, async () => {
      const taken = await client.query(`SELECT 1 FROM ${d.groups} WHERE gens && $1::integer[]`, [gens]);
      if (taken.rowCount! > 0) return false; // another daemon grouped them
      await client.query(`INSERT INTO ${d.groups} (grp, gens, ${FILTER}) SELECT coalesce(max(grp), 0) + 1, $1, $2 FROM ${d.groups}`, [
        gens,
        filter.buffer(),
      ]);
      return true;
    });
    if (!done) return built;
    built.push(`${d.groups} [${gens[0]}..${gens[gens.length - 1]}]`);
  }
}

/**
 * Builds the filter of each sealed generation of the id state (docs/storage.md#deduplication) and keeps
 * it in the slots table beside the generation, where the workers load it. A sealed generation is never
 * written again (the rotation waited for every claim into it), so its filter can be built at once. Each
 * filter is built once, by whichever daemon's maintenance gets there first.
 */
import { performance } from "node:perf_hooks";
import { setImmediate as nextTurn } from "node:timers/promises";
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { DedupFilter, DedupFilterFull } from "../shared/dedup-filter";
import type { FuseFilter } from "../shared/fuse-filter";
import { DEDUP_FILTER_IDENT as FILTER, DEDUP_KEY_COLUMN, dedupShape } from "../shared/dedup-sql";
import type { StreamDefinition } from "../shared/stream-definition";
import { quoteIdent } from "../shared/sql-identifiers";
import { binaryCopyRowsAt, COPY_HEADER_BYTES, loadFilter } from "./filter-copy";
import type { OpenGenerationFilters, PrefilledFilters } from "./open-generation-filters";
import { locked } from "./partitions";

/** One row of a binary COPY of the key column: field count (2 bytes), field length (4), the 16-byte uuid. */
const KEY_ROW_BYTES = 22;

/**
 * The longest the front thread adds keys before it lets its sockets run: chunks a COPY has already buffered are
 * taken without a turn of the event loop, so a pass's read held every ack back while it hashed
 * (docs/performance.md#latency-under-paced-load).
 */
export const SLICE_MS = 4;

/**
 * Streams every key of a partition (a partition may hold millions) in binary to `add`, as its 16 bytes at
 * `at` in `data`: no text to format in PostgreSQL nor to parse and slice here. `add` returns false once it
 * wants no more; the COPY is then drained, so the connection stays usable. Yields to the event loop every
 * SLICE_MS. `where`: a condition on the rows, from ` WHERE` on.
 */
export async function readKeys(client: pg.ClientBase, part: string, add: (data: Buffer, at: number) => boolean, where = ""): Promise<void> {
  const stream = client.query(copyTo(`COPY (SELECT ${quoteIdent(DEDUP_KEY_COLUMN)} FROM ${part}${where}) TO STDOUT (FORMAT binary)`));
  let rest: Buffer | null = null;
  let header = true;
  let wanted = true;
  let sliceStart = performance.now();
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    if (!wanted) continue;
    if (performance.now() - sliceStart >= SLICE_MS) {
      await nextTurn();
      sliceStart = performance.now();
    }
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
      wanted = add(data, at + 6);
      at += KEY_ROW_BYTES;
      if (!wanted) break;
    }
    rest = at < data.length ? data.subarray(at) : null;
  }
  // What is left is the trailer: a field count of -1.
  if (wanted && (rest === null || rest.length !== 2 || rest.readInt16BE(0) !== -1))
    throw new Error(`${part}: the binary COPY of its keys ended early`);
}

/**
 * Adds the key at `at` in `data` to `filter` (`once`: unless it already answers yes for it, a key read twice);
 * null, or the DedupFilterFull it threw (the filter then misses a key, and must be discarded).
 */
export function tryAdd(filter: DedupFilter, data: Buffer, at: number, once = false): DedupFilterFull | null {
  try {
    if (once) filter.addBytesOnce(data, at);
    else filter.addBytes(data, at);
    return null;
  } catch (err) {
    if (!(err instanceof DedupFilterFull)) throw err;
    return err;
  }
}

/** Adds every key of a partition to a filter; throws DedupFilterFull, once the COPY has ended, if it filled. */
async function fillFilter(client: pg.ClientBase, part: string, filter: DedupFilter): Promise<void> {
  let full: DedupFilterFull | null = null;
  await readKeys(client, part, (data, at) => (full = tryAdd(filter, data, at)) === null);
  if (full !== null) throw full as DedupFilterFull;
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

/**
 * Sealed generations per group filter. A worker checks every id against each filter it holds, one cache miss
 * each: every generation joins a group as its filter is built, so that is about
 * generations / GROUP_GENERATIONS + 1 filters (docs/storage.md#the-window-and-the-id-state).
 */
export const GROUP_GENERATIONS = 10;

/**
 * The group filters a process holds (the front's FilterDirectory): the open group's filter is then neither
 * read back from PostgreSQL before a generation joins it nor after.
 */
export interface GroupFilterCache {
  /** A private copy of the filter held for group `grp` of `slots` holding exactly `gens` (never a folded one). */
  copyOf(slots: string, grp: number, gens: readonly number[]): DedupFilter | undefined;
  /**
   * The filter just built for group `grp` of `slots`, holding `gens`, about to be stored: published to the
   * workers at once (a failed store leaves it valid: a sealed generation's keys never change).
   */
  built(slots: string, grp: number, gens: readonly number[], filter: DedupFilter): void;
  /** The filter just stored for group `grp` of `slots`, holding `gens` (after `built`). */
  stored(slots: string, grp: number, gens: readonly number[], filter: DedupFilter): void;
  /** Whether closed groups are worth sealing here: past the filter budget. */
  readonly wantsSealed: boolean;
  /**
   * The sealed filter just stored for closed group `grp`: the next refresh takes it instead of reading it back.
   * `scratchBytes`: what building and storing it held and let go of.
   */
  sealed(slots: string, grp: number, gens: readonly number[], filter: FuseFilter, scratchBytes: number): void;
}

/** A group taking generations: its number and generations as stored, and a private copy of its filter. */
export interface OpenGroup {
  grp: number;
  gens: number[];
  filter: DedupFilter;
}

/**
 * The group a generation of `keys` keys joins: the newest, when it has fewer than GROUP_GENERATIONS generations
 * and room for the keys; null when a new one must start. Its filter is a copy (of this pass's `last`, of the
 * process's, or read from PostgreSQL): a filter that fills while taking a generation misses a key, and is
 * discarded whole, never published.
 */
export async function openGroup(
  client: pg.ClientBase,
  d: { slots: string; groups: string },
  keys: number,
  last: OpenGroup | null,
  cache?: GroupFilterCache,
): Promise<OpenGroup | null> {
  const { rows } = await client.query<{ grp: number; gens: number[] }>(`SELECT grp, gens FROM ${d.groups} ORDER BY grp DESC LIMIT 1`);
  const newest = rows[0];
  if (newest === undefined || newest.gens.length >= GROUP_GENERATIONS) return null;
  const same = last !== null && last.grp === newest.grp && last.gens.join() === newest.gens.join();
  const filter =
    (same ? new DedupFilter(last.filter.bytes()) : cache?.copyOf(d.slots, newest.grp, newest.gens)) ??
    (await loadFilter(client, d.groups, "grp", newest.grp));
  // The newest group is never sealed (src/storage/sealed-groups.ts): its cuckoo filter takes keys.
  if (!(filter instanceof DedupFilter) || filter.roomLeft() < keys) return null;
  return { grp: newest.grp, gens: newest.gens, filter };
}

/** The generation's filters from a read of all its keys, and the group it joins (null: it starts one). */
async function readGeneration(
  client: pg.ClientBase,
  d: { slots: string; groups: string },
  part: string,
  keys: number,
  last: OpenGroup | null,
  cache?: GroupFilterCache,
): Promise<PrefilledFilters> {
  const open = await openGroup(client, d, keys, last, cache);
  let own: DedupFilter | null = new DedupFilter(keys);
  let group: DedupFilter | null = open?.filter ?? new DedupFilter(keys * GROUP_GENERATIONS);
  // One read for both; a filter that fills (DedupFilterFull, rare) drops out and is built again below.
  await readKeys(client, part, (data, at) => {
    if (own !== null && tryAdd(own, data, at) !== null) own = null;
    if (group !== null && tryAdd(group, data, at) !== null) group = null;
    return own !== null || group !== null;
  });
  own ??= await filterOf(Math.ceil(keys * 1.25), (f) => fillFilter(client, part, f));
  // A group that filled after all: the generation starts a new one.
  const joins = group !== null ? open : null;
  group ??= await filterOf(keys * GROUP_GENERATIONS, (f) => fillFilter(client, part, f));
  return { own, group, joins: joins === null ? null : { grp: joins.grp, gens: joins.gens } };
}

/**
 * Builds the missing filters of the sealed generations of one stream's id state, oldest first, and adds each
 * generation's keys to the open group's filter in the same read (a group of GROUP_GENERATIONS generations used
 * to read every key a second time, ~3 s of a backend per group; docs/storage.md#the-window-and-the-id-state), or
 * completes the filters `prefills` filled while the generation was open. The group's new version goes to the
 * workers (`cache.built`) before it is stored: from then on their claims check it instead of probing the
 * generation with every key. The generation's filter and its group's are stored in one transaction under the
 * schema lock. Returns their partitions. `cache`: the group filters this process holds.
 */
export async function buildDedupFilters(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  cache?: GroupFilterCache,
  prefills?: OpenGenerationFilters,
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ part: string; gen: number }>(
    `SELECT part, gen FROM ${d.slots} WHERE ${FILTER} IS NULL AND sealed_at IS NOT NULL ORDER BY gen`,
  );
  const built: string[] = [];
  let last: OpenGroup | null = null;
  for (const slot of rows) {
    const done = await locked(client, async () => {
      const still = await client.query(`SELECT 1 FROM ${d.slots} WHERE gen = $1 AND ${FILTER} IS NULL`, [slot.gen]);
      if (still.rowCount === 0) return false; // another daemon built it, or the generation was dropped
      const { own, group, joins } =
        (await prefills?.complete(client, d, slot.gen)) ??
        (await readGeneration(client, d, slot.part, await keysAtMost(client, [slot.part]), last, cache));
      const gens = [...(joins?.gens ?? []), slot.gen];
      // Under the schema lock no other daemon numbers a group meanwhile.
      const grp =
        joins?.grp ?? (await client.query<{ grp: number }>(`SELECT coalesce(max(grp), 0) + 1 AS grp FROM ${d.groups}`)).rows[0].grp;
      cache?.built(d.slots, grp, gens, group);
      await client.query(`UPDATE ${d.slots} SET ${FILTER} = $2 WHERE gen = $1`, [slot.gen, own.buffer()]);
      if (joins !== null) {
        await client.query(`UPDATE ${d.groups} SET gens = $2, ${FILTER} = $3 WHERE grp = $1`, [grp, gens, group.buffer()]);
      } else {
        await client.query(`INSERT INTO ${d.groups} (grp, gens, ${FILTER}) VALUES ($1, $2, $3)`, [grp, gens, group.buffer()]);
      }
      cache?.stored(d.slots, grp, gens, group);
      last = { grp, gens, filter: group };
      return true;
    });
    if (done) built.push(slot.part);
  }
  return built;
}

/**
 * Builds a group filter over the keys of each run of GROUP_GENERATIONS sealed generations (oldest first) that
 * has a filter and no group: what an earlier release left (its generations joined a group only ten at a
 * time; since this one each joins as its filter is built, buildDedupFilters); returns a label per group built. The keys are streamed without holding the
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

/**
 * Seals closed groups of id-state generations (docs/storage.md#sealed-group-filters): once a newer group exists
 * no generation joins a group any more, so its cuckoo filter can be rebuilt as a binary fuse filter
 * (src/shared/fuse-filter.ts), which lets through several times fewer absent ids at the widths the budget folds
 * filters to. A daemon past its filter budget seals the closed groups and takes their sealed filters instead;
 * stored beside the cuckoo filter (earlier releases keep reading that one), for every daemon. Idempotent, and
 * racing daemons are harmless: the first store wins.
 */
import { performance } from "node:perf_hooks";
import { setImmediate as nextTurn } from "node:timers/promises";
import type pg from "pg";
import { DedupFilter } from "../shared/dedup-filter";
import { DEDUP_SEALED_IDENT as SEALED, dedupShape } from "../shared/dedup-sql";
import { sealFilter } from "../shared/fuse-filter";
import type { StreamDefinition } from "../shared/stream-definition";
import { type GroupFilterCache, SLICE_MS } from "./dedup-filters";
import { loadFilter } from "./filter-copy";

/**
 * Groups sealed per pass and stream: a group of ~5 million keys takes about 1.5 s of the front thread, in
 * slices (and the filter directory spaces seals further apart: FilterDirectory.wantsSealed).
 */
const GROUPS_PER_PASS = 1;

/**
 * Seals up to GROUPS_PER_PASS closed groups of `stream`, oldest first (the budget folds the oldest first, and
 * deepest), when `cache` (the filters this process holds) is past its budget; returns a label per group sealed.
 * A group whose keys no seed could place is marked with an empty sealed filter and keeps its cuckoo filter.
 */
export async function sealDedupGroups(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  cache: GroupFilterCache,
): Promise<string[]> {
  if (!cache.wantsSealed) return [];
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ grp: number; gens: number[] }>(
    `SELECT grp, gens FROM ${d.groups} WHERE ${SEALED} IS NULL AND grp < (SELECT max(grp) FROM ${d.groups}) ORDER BY grp LIMIT ${GROUPS_PER_PASS}`,
  );
  const sealed: string[] = [];
  for (const { grp, gens } of rows) {
    // PostgreSQL keeps the cuckoo filter as built (the one held here is folded).
    const cuckoo = await loadFilter(client, d.groups, "grp", grp);
    if (!(cuckoo instanceof DedupFilter) || !cuckoo.takesKeys) continue; // gone meanwhile
    const build = sealFilter(cuckoo);
    let sliceStart = performance.now();
    let step = build.next();
    while (!step.done) {
      if (performance.now() - sliceStart >= SLICE_MS) {
        await nextTurn();
        sliceStart = performance.now();
      }
      step = build.next();
    }
    const filter = step.value;
    const stored = await client.query(`UPDATE ${d.groups} SET ${SEALED} = $2 WHERE grp = $1 AND ${SEALED} IS NULL`, [
      grp,
      filter?.buffer() ?? Buffer.alloc(0),
    ]);
    if (stored.rowCount !== 1) continue; // another daemon sealed it first
    // Let go of: the cuckoo filter read, the build's scratch (about its size), the statement's copy of the filter.
    if (filter !== null) cache.sealed(d.slots, grp, gens, filter, 2 * cuckoo.byteLength + filter.byteLength);
    sealed.push(`${d.groups} ${grp} ${filter !== null ? "sealed" : "kept its cuckoo filter (keys not separable)"}`);
  }
  return sealed;
}

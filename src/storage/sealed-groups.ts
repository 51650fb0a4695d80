/**
 * Seals closed groups of id-state generations (docs/storage.md#sealed-group-filters): once a newer group exists
 * no generation joins a group any more, so its cuckoo filter is rebuilt as a binary fuse filter
 * (src/shared/fuse-filter.ts), which lets through several times fewer absent ids at the widths the budget folds
 * filters to. Stored beside the cuckoo filter (earlier releases keep reading that one); every daemon's next
 * refresh loads it instead. Idempotent and racing daemons are harmless: the first store wins.
 */
import { performance } from "node:perf_hooks";
import { setImmediate as nextTurn } from "node:timers/promises";
import type pg from "pg";
import { DedupFilter } from "../shared/dedup-filter";
import { DEDUP_SEALED_IDENT as SEALED, dedupShape } from "../shared/dedup-sql";
import { sealFilter } from "../shared/fuse-filter";
import type { StreamDefinition } from "../shared/stream-definition";
import type { GroupFilterCache } from "./dedup-filters";
import { loadFilter } from "./filter-copy";

/**
 * Groups sealed per pass and stream: a group of ~5 million keys takes a few hundred milliseconds of the front
 * thread, a shard at a time; a database of an earlier release seals its groups over its first minute.
 */
const GROUPS_PER_PASS = 1;

/** The longest a build runs before the sockets get a turn (as the reads of keys, src/storage/dedup-filters.ts). */
const SLICE_MS = 4;

/**
 * Seals up to GROUPS_PER_PASS closed groups of `stream`, newest first (the oldest are the first the budget folds
 * and the window drops); returns a label per group sealed. A group whose keys no seed could place is marked
 * with an empty sealed filter and keeps its cuckoo filter.
 */
export async function sealDedupGroups(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  cache?: GroupFilterCache,
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ grp: number; gens: number[] }>(
    `SELECT grp, gens FROM ${d.groups} WHERE ${SEALED} IS NULL AND grp < (SELECT max(grp) FROM ${d.groups}) ORDER BY grp DESC LIMIT ${GROUPS_PER_PASS}`,
  );
  const sealed: string[] = [];
  for (const { grp, gens } of rows) {
    // The filter this process holds as built, else PostgreSQL's copy (which it always keeps as built).
    const cuckoo = cache?.asBuilt(d.slots, grp, gens) ?? (await loadFilter(client, d.groups, "grp", grp));
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
    const ok = step.value !== null;
    const bytes = step.value?.buffer() ?? Buffer.alloc(0);
    const stored = await client.query(`UPDATE ${d.groups} SET ${SEALED} = $2 WHERE grp = $1 AND ${SEALED} IS NULL`, [grp, bytes]);
    if (stored.rowCount === 1 && step.value !== null) cache?.sealed(d.slots, grp, gens, step.value);
    if (stored.rowCount === 1) sealed.push(`${d.groups} ${grp} ${ok ? "sealed" : "kept its cuckoo filter (keys not separable)"}`);
  }
  return sealed;
}

/**
 * The front thread's copy of the filters of every deduplicating stream's sealed id-state generations
 * (docs/storage.md#deduplication): loaded from the slots tables at start and after each maintenance step into shared
 * memory (a group's filter instead of those of its generations), forgotten when their generations are
 * dropped, and published whole to the workers on
 * DEDUP_FILTERS_CHANNEL. One copy per process, whatever the number of workers; a worker started since the
 * last pass gets them at the next (until then it probes every sealed generation: slower, never wrong). Within
 * a budget (`dedupFilterMb`, docs/storage.md#filter-memory): past it closed groups are sealed
 * (docs/storage.md#sealed-group-filters) and the oldest filters folded, then left out. A
 * filter no longer published is kept as a spare for the next copy of the open group's filter, once every worker
 * has taken a publication without it (src/shared/filter-readers.ts).
 */
import { performance } from "node:perf_hooks";
import { BroadcastChannel } from "node:worker_threads";
import type pg from "pg";
import { DedupFilter } from "../shared/dedup-filter";
import type { FilterReaders } from "../shared/filter-readers";
import { DEDUP_FILTER_IDENT as FILTER, DEDUP_SEALED_IDENT as SEALED, type DedupShape, dedupShape } from "../shared/dedup-sql";
import type { FuseFilter } from "../shared/fuse-filter";
import type { IdStateFilter } from "../shared/id-state-filter";
import type { StreamDefinition } from "../shared/stream-definition";
import { DEDUP_FILTERS_CHANNEL, DEDUP_FILTERS_WANTED, type FilterPublication, type PublishedFilter } from "../shared/task-protocol";
import type { GroupFilterCache } from "./dedup-filters";
import { collectGarbageSoon } from "../ops/heap-collection";
import { loadFilter } from "./filter-copy";

/**
 * Filters no longer published kept for reuse: the open group's previous version. Its filter keeps one size until
 * the group closes, so that is what its next copy needs. One only: when a worker is slow to take a publication,
 * the copy takes new memory and the spare pushed out is collected (docs/performance.md#memory).
 */
const SPARES = 1;

/**
 * Memory let go of at which a collection is asked for at once, mid-refresh: a front thread's full collection
 * frees what it let go of, which otherwise waits for its old generation to grow (docs/performance.md#memory).
 */
const GARBAGE_BYTES = 64 * 2 ** 20;

/**
 * Folds per refresh of filters the workers already hold. A fold writes a new buffer while the workers still read
 * the old one, so both are resident until they take the next publication and every thread has collected it:
 * a new group's filter (~9 MiB) past the budget took eight folds to 14 bits at once, ~75 MiB of old copies
 * beside the new for a moment (docs/storage.md#filter-memory). The rest wait for the next passes (every 2 s),
 * the filters over the budget meanwhile by at most what the pass added.
 */
const FOLDS_PER_PASS = 2;

/**
 * Groups whose cuckoo filter held is replaced by their sealed filter per refresh: each is read (~10 MiB) and
 * folded while the workers still hold the cuckoo filter, as a fold does.
 */
const SWITCHES_PER_PASS = 2;

/**
 * Least time between two groups sealed by this process: a seal takes ~1.5 s of the front thread, and a full
 * bench's soak crossing the budget sealed one every pass (2 s) at 16 µs/event of daemon CPU instead of ~10. A
 * group closes every minute or more at 50,000 events/s, so this keeps up.
 */
const SEAL_INTERVAL_MS = 10_000;

/** A buffer no publication since `after - 1` holds: free once every worker has taken `after`. */
interface Spare {
  words: SharedArrayBuffer;
  after: number;
}

/** A group as the refresh reads it: whether it has a sealed filter, and its cuckoo filter's bytes. */
interface GroupRow {
  grp: number;
  gens: number[];
  sealed: boolean;
  bytes: number;
}

/** A filter held, the stream's slots table and the generations whose keys it holds (as published). */
interface Held {
  filter: IdStateFilter;
  slots: string;
  gens: number[];
}

export interface FilterDirectorySize {
  /** Filters held (a group's counts once). */
  count: number;
  /** Their bytes, one shared copy for every worker. */
  bytes: number;
  /** Of those, the filters folded to fit the budget. */
  folded: number;
  /** Sealed generations whose keys the filters held cover. */
  generations: number;
  /** Sealed generations left without a filter by the budget: probed in PostgreSQL for every id. */
  unfiltered: number;
}

/** The directory's key of a group's filter: its generations only grow while it is open, so their count tells its versions apart. */
function groupKey(slots: string, grp: number, gens: readonly number[]): string {
  return `${slots} G${grp}/${gens.length}`;
}

/** The key of a closed group's sealed filter (docs/storage.md#sealed-group-filters). */
function sealedKey(slots: string, grp: number, gens: readonly number[]): string {
  return `${groupKey(slots, grp, gens)} sealed`;
}

export class FilterDirectory implements GroupFilterCache {
  /** By `<slots table> g<gen>` (one generation) or groupKey (a group). */
  private held = new Map<string, Held>();
  /** Filters the budget left out: not loaded again (a filter never changes; it goes with its generations). */
  private leftOut = new Map<string, number>();
  private readonly channel = new BroadcastChannel(DEDUP_FILTERS_CHANNEL);
  /** Whether a refresh has run: before it the directory holds nothing worth telling a worker. */
  private refreshed = false;
  /** The last publication's number. */
  private seq = 0;
  /** Filters left out of the publications since, oldest first (at most SPARES). */
  private spares: Spare[] = [];
  /** Bytes let go of since the last collection asked for. */
  private garbage = 0;
  /** Folds of filters the workers hold in this refresh (FOLDS_PER_PASS). */
  private heldFolds = 0;
  /** Sealed filters this process built since the last refresh, by key: taken instead of read back. */
  private sealedHere = new Map<string, Held>();
  /** Groups switched between their cuckoo and sealed filters in this refresh (SWITCHES_PER_PASS). */
  private switches = 0;
  /** Whether the filters as built outgrew the budget at the last refresh (closed groups then sealed). */
  private pastBudget = false;
  /** When this process last sealed a group (performance.now()). */
  private lastSeal = Number.NEGATIVE_INFINITY;
  /** Collections asked for, for tests. */
  collections = 0;

  /**
   * `budgetBytes`: what the filters may hold at most (`dedupFilterMb`, docs/storage.md#filter-memory).
   * `readers`: the workers' publications taken; without it no buffer is reused (a reader could be unregistered).
   */
  constructor(
    private readonly schema: string,
    private readonly streams: readonly StreamDefinition[],
    private readonly budgetBytes = Number.POSITIVE_INFINITY,
    private readonly readers: FilterReaders | null = null,
  ) {
    // A worker started since the last publication (piscina starts them as load comes) gets the filters now.
    this.channel.onmessage = (event) => {
      if ((event as unknown as { data: unknown }).data === DEDUP_FILTERS_WANTED && this.refreshed) this.publish();
    };
    (this.channel as unknown as { unref(): void }).unref(); // after onmessage, which refs it
  }

  /**
   * Loads the filters built since the last pass and forgets the others: each group's, and each sealed
   * generation's that belongs to no group (a grouped generation's own filter would only cost memory). Newest
   * first, within the budget: past it the closed groups take their sealed filters where they have one
   * (takesSealed), and the oldest filters are folded (to 14-bit fingerprints, then 12, and so on), then left out.
   * Asks for a collection once it let go of memory (filters replaced, folded or forgotten; collectGarbageSoon).
   */
  async refresh(client: pg.ClientBase): Promise<void> {
    const wanted: { key: string; slots: string; table: string; column: "gen" | "grp"; field: string; id: number; gens: number[] }[] = [];
    this.switches = 0;
    const shapes: { d: DedupShape; groups: GroupRow[]; filtered: { gen: number; bytes: number }[]; grouped: Set<number> }[] = [];
    for (const stream of this.streams) {
      const d = dedupShape(this.schema, stream);
      if (d === null) continue;
      const groups = await client.query<GroupRow>(
        `SELECT grp, gens, coalesce(octet_length(${SEALED}), 0) > 0 AS sealed, octet_length(${FILTER}) AS bytes FROM ${d.groups}`,
      );
      const filtered = await client.query<{ gen: number; bytes: number }>(
        `SELECT gen, octet_length(${FILTER}) AS bytes FROM ${d.slots} WHERE ${FILTER} IS NOT NULL`,
      );
      shapes.push({ d, groups: groups.rows, filtered: filtered.rows, grouped: new Set(groups.rows.flatMap((g) => g.gens)) });
    }
    // Past the budget (its filters as built outgrow it; back below at nine tenths of it), closed groups' sealed
    // filters replace their cuckoo filters (docs/storage.md#sealed-group-filters).
    let asBuilt = 0;
    for (const { groups, filtered, grouped } of shapes) {
      for (const g of groups) asBuilt += g.bytes;
      for (const r of filtered) if (!grouped.has(r.gen)) asBuilt += r.bytes;
    }
    this.pastBudget = asBuilt > this.budgetBytes || (this.pastBudget && asBuilt > this.budgetBytes * 0.9);
    for (const { d, groups, filtered, grouped } of shapes) {
      for (const g of groups) {
        const sealed = g.sealed && this.takesSealed(d.slots, g.grp, g.gens);
        wanted.push({
          key: sealed ? sealedKey(d.slots, g.grp, g.gens) : groupKey(d.slots, g.grp, g.gens),
          slots: d.slots,
          table: d.groups,
          column: "grp",
          field: sealed ? SEALED : FILTER,
          id: g.grp,
          gens: g.gens,
        });
      }
      for (const r of filtered) {
        if (!grouped.has(r.gen))
          wanted.push({
            key: `${d.slots} g${r.gen}`,
            slots: d.slots,
            table: d.slots,
            column: "gen",
            field: FILTER,
            id: r.gen,
            gens: [r.gen],
          });
      }
    }
    // Newest first (several streams share the budget, taken by generation number).
    wanted.sort((a, b) => Math.max(...b.gens) - Math.max(...a.gens));
    const next = new Map<string, Held>();
    const leftOut = new Map<string, number>();
    let bytes = 0;
    this.heldFolds = 0;
    for (const w of wanted) {
      if (this.leftOut.has(w.key) || leftOut.size > 0) {
        leftOut.set(w.key, w.gens.length); // older than one the budget left out: left out too
        continue;
      }
      let h = this.held.get(w.key) ?? this.sealedHere.get(w.key);
      if (h === undefined) {
        // A group version this process built is held already (built), never read back.
        const filter = await loadFilter(client, w.table, w.column, w.id, (n) => this.spare(n), w.field);
        if (filter === null) continue;
        h = { filter, slots: w.slots, gens: w.gens };
      }
      next.set(w.key, h);
      bytes += h.filter.byteLength;
      bytes = this.fit(next, bytes, leftOut);
    }
    for (const [key, h] of this.sealedHere) if (!next.has(key)) this.letGo(h.filter.byteLength);
    this.sealedHere.clear();
    this.retire(next);
    this.held = next;
    this.leftOut = leftOut;
    this.refreshed = true;
    if (this.garbage > 0) this.collect();
  }

  /** Whether `filter` is the one published for `key`, which the workers may still read (next and held share keys). */
  private isPublished(key: string, filter: IdStateFilter): boolean {
    return this.held.get(key)?.filter === filter;
  }

  /**
   * `bytes` this process no longer refers to: collected at the end of the refresh, or at once past
   * GARBAGE_BYTES (a start folding many filters it has just loaded).
   */
  private letGo(bytes: number): void {
    this.garbage += bytes;
    if (this.garbage >= GARBAGE_BYTES) this.collect();
  }

  private collect(): void {
    this.garbage = 0;
    this.collections++;
    void collectGarbageSoon();
  }

  copyOf(slots: string, grp: number, gens: readonly number[]): DedupFilter | undefined {
    const filter = this.held.get(groupKey(slots, grp, gens))?.filter;
    // A folded filter takes no keys: the group's is read from PostgreSQL instead.
    if (!(filter instanceof DedupFilter) || !filter.takesKeys) return undefined;
    const words = this.spare(filter.byteLength) ?? new SharedArrayBuffer(filter.byteLength);
    new Uint8Array(words).set(filter.bytes());
    return new DedupFilter(words);
  }

  /** A spare of `bytes` bytes no worker can still read, taken out of the spares; or undefined. */
  private spare(bytes: number): SharedArrayBuffer | undefined {
    const i = this.spares.findIndex((s) => s.words.byteLength === bytes && this.readers?.allPast(s.after));
    if (i < 0) return undefined;
    return this.spares.splice(i, 1)[0].words;
  }

  /**
   * Keeps the filters `next` leaves out as spares (only the SPARES newest), when a copy could use them: of the
   * size of a filter still taking keys (a group's next version), so that a group gone with the window or a
   * filter replaced by its fold does not push out the open group's previous version. The next publication is
   * the first without them.
   */
  private retire(next: Map<string, Held>): void {
    const kept = new Set([...next.values()].map((h) => h.filter));
    const sizes = new Set([...next.values()].filter((h) => h.filter.takesKeys).map((h) => h.filter.byteLength));
    for (const h of this.held.values()) {
      if (kept.has(h.filter)) continue;
      if (this.readers !== null && sizes.has(h.filter.byteLength)) this.spares.push({ words: h.filter.shared, after: this.seq + 1 });
      else this.letGo(h.filter.byteLength);
    }
    for (const dropped of this.spares.splice(0, Math.max(0, this.spares.length - SPARES))) this.letGo(dropped.words.byteLength);
  }

  built(slots: string, grp: number, gens: readonly number[], filter: DedupFilter): void {
    const versions = `${slots} G${grp}/`;
    const next = new Map<string, Held>([[groupKey(slots, grp, gens), { filter, slots, gens: [...gens] }]]);
    for (const [key, h] of this.held) if (!key.startsWith(versions)) next.set(key, h);
    this.retire(next);
    this.held = next;
    this.publish();
  }

  /**
   * Whether a closed group is worth sealing here now: only past the budget (below it a cuckoo filter as built
   * lets through as few ids as a sealed one and is checked faster; docs/storage.md#sealed-group-filters), and
   * SEAL_INTERVAL_MS after the last one.
   */
  get wantsSealed(): boolean {
    return this.pastBudget && performance.now() - this.lastSeal >= SEAL_INTERVAL_MS;
  }

  /**
   * Whether a refresh takes group `grp`'s sealed filter (it has one) rather than its cuckoo filter: past the
   * budget, and back below it, the kind held is swapped for SWITCHES_PER_PASS groups a refresh at most; one
   * held in neither kind (a start) is read in the kind wanted.
   */
  private takesSealed(slots: string, grp: number, gens: readonly number[]): boolean {
    const sealed = sealedKey(slots, grp, gens);
    if (this.sealedHere.has(sealed)) return true;
    const holdsSealed = this.held.has(sealed);
    if (!holdsSealed && !this.held.has(groupKey(slots, grp, gens))) return this.pastBudget;
    if (holdsSealed === this.pastBudget || this.switches >= SWITCHES_PER_PASS) return holdsSealed;
    this.switches++;
    return this.pastBudget;
  }

  sealed(slots: string, grp: number, gens: readonly number[], filter: FuseFilter, scratchBytes: number): void {
    this.lastSeal = performance.now();
    // Taken at the width the group's cuckoo filter is held at (one copy, where the budget's folds would make several).
    const width = this.held.get(groupKey(slots, grp, gens))?.filter.bits ?? 16;
    const taken = width < filter.bits ? filter.fold(width) : filter;
    this.sealedHere.set(sealedKey(slots, grp, gens), { filter: taken, slots, gens: [...gens] });
    // What sealing let go of (the cuckoo filter read, its scratch, the statement's copy, the filter as built):
    // collected at the end of the next refresh.
    this.letGo(scratchBytes + (taken === filter ? 0 : filter.byteLength));
  }

  stored(_slots: string, _grp: number, _gens: readonly number[], filter: DedupFilter): void {
    // Writing it took a buffer of its size (the Bind message), as its generation's own filter did a tenth.
    this.letGo(filter.byteLength);
  }

  /**
   * Until `next` fits the budget: folds the oldest of the widest filters that can be, 16 bits to 14, then when
   * none is left of 14 to 12, and so on (a cuckoo filter 16 → 14 → 12 → 8, a sealed group's two bits at a time
   * down to 4), then leaves out the oldest; its bytes. Past FOLDS_PER_PASS folds of filters the workers hold, the rest wait for
   * the next refresh. Each step costs more probes per byte saved than the one before: for a cuckoo filter about
   * 3.5, 13 and 136 more false positives in ten thousand ids per eighth of the filter as built saved
   * (docs/storage.md#filter-memory).
   */
  private fit(next: Map<string, Held>, bytes: number, leftOut: Map<string, number>): number {
    while (bytes > this.budgetBytes && next.size > 0) {
      const held = [...next.entries()].reverse(); // oldest first
      const foldable = held.filter(([, h]) => h.filter.foldable);
      const widest = Math.max(...foldable.map(([, h]) => h.filter.bits));
      const fold = foldable.find(([, h]) => h.filter.bits === widest);
      if (fold) {
        const [key, h] = fold;
        const published = this.isPublished(key, h.filter);
        if (published && this.heldFolds++ >= FOLDS_PER_PASS) break;
        const filter = h.filter.fold();
        bytes -= h.filter.byteLength - filter.byteLength;
        if (!published) this.letGo(h.filter.byteLength); // one published is let go of at the end, or kept as a spare
        next.set(key, { ...h, filter });
        continue;
      }
      const [key, h] = held[0];
      next.delete(key);
      if (!this.isPublished(key, h.filter)) this.letGo(h.filter.byteLength);
      leftOut.set(key, h.gens.length);
      bytes -= h.filter.byteLength;
    }
    return bytes;
  }

  /** Every filter held, for the workers (they replace what they had). */
  list(): PublishedFilter[] {
    return [...this.held.values()].map((h) => ({ slots: h.slots, gens: h.gens, words: h.filter.shared }));
  }

  /** The last publication's number (what a worker's FilterReaders slot holds once it took it). */
  get lastPublication(): number {
    return this.seq;
  }

  publish(): void {
    const publication: FilterPublication = { seq: ++this.seq, filters: this.list() };
    this.channel.postMessage(publication);
  }

  size(): FilterDirectorySize {
    let bytes = 0;
    let folded = 0;
    let generations = 0;
    for (const h of this.held.values()) {
      bytes += h.filter.byteLength;
      generations += h.gens.length;
      if (h.filter.bits < 16) folded++;
    }
    let unfiltered = 0;
    for (const gens of this.leftOut.values()) unfiltered += gens;
    return { count: this.held.size, bytes, folded, generations, unfiltered };
  }

  close(): void {
    this.channel.close();
  }
}

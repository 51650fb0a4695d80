/**
 * A worker's view of the filters of one stream's sealed id-state generations
 * (docs/storage.md#deduplication): the front thread publishes them in shared memory after each maintenance
 * pass (src/storage/filter-directory.ts), and the worker checks them before each claim so that PostgreSQL
 * probes a sealed generation only for the ids that hit its filter. A generation whose filter this worker has
 * not received yet is simply probed for every id: a stale view costs time, never correctness.
 */
import { BroadcastChannel } from "node:worker_threads";
import { fingerprint, hashKey } from "../../src/shared/dedup-filter";
import type { FilterReaders } from "../../src/shared/filter-readers";
import { filterFrom, type IdStateFilter } from "../../src/shared/id-state-filter";
import { DEDUP_FILTERS_CHANNEL, DEDUP_FILTERS_WANTED, type FilterPublication, type PublishedFilter } from "../../src/shared/task-protocol";

export interface FilterCheck {
  /** Each key that hit a filter, once per generation of the filter it hit (null: no publication received yet). */
  maybe: string[] | null;
  /** The generation of each `maybe` entry. */
  gens: number[] | null;
  /** The generations whose filters were checked (null: no publication received yet). */
  covered: number[] | null;
}

export class IdFilters {
  private filters: IdStateFilter[] = [];
  /** The generations each filter holds the keys of (one, or a group's). */
  private filterGens: number[][] = [];
  /** null until the front's first publication: until then PostgreSQL probes every sealed generation. */
  private covered: number[] | null = null;
  private readonly h = new Uint32Array(4);
  /** Each key's first hash word and fingerprint, and the indexes of the keys a filter may hold. */
  private h0s = new Uint32Array(0);
  private fps = new Uint32Array(0);
  private hits = new Uint32Array(0);

  constructor(readonly slotsTable: string) {}

  /** Takes the published filters of this stream (the others are another stream's). */
  set(published: readonly PublishedFilter[]): void {
    const mine = published.filter((p) => p.slots === this.slotsTable);
    this.filterGens = mine.map((p) => p.gens);
    this.filters = mine.map((p) => filterFrom(p.words));
    this.covered = mine.flatMap((p) => p.gens).sort((a, b) => a - b);
  }

  check(keys: readonly string[]): FilterCheck {
    if (this.covered === null) return { maybe: null, gens: null, covered: null };
    const n = keys.length;
    if (this.fps.length < n) this.grow(n);
    // Hashed and fingerprinted once, then each filter checks the whole batch (collectHits).
    const { h0s, fps, hits, h } = this;
    for (let i = 0; i < n; i++) {
      hashKey(keys[i], h);
      h0s[i] = h[0];
      fps[i] = fingerprint(h);
    }
    // A key that hits a group's filter may be in any of its generations: it is probed in each.
    const maybe: string[] = [];
    const gens: number[] = [];
    const filters = this.filters;
    for (let f = 0; f < filters.length; f++) {
      const found = filters[f].collectHits(h0s, fps, n, hits);
      const of = this.filterGens[f];
      for (let j = 0; j < found; j++) {
        for (let g = 0; g < of.length; g++) {
          maybe.push(keys[hits[j]]);
          gens.push(of[g]);
        }
      }
    }
    return { maybe, gens, covered: this.covered };
  }

  /** Room for the hashes of a batch of `n` keys (kept for the next batches: no allocation per check). */
  private grow(n: number): void {
    this.h0s = new Uint32Array(n);
    this.fps = new Uint32Array(n);
    this.hits = new Uint32Array(n);
  }
}

/**
 * Keeps `filters` current with what the front thread publishes (one listener per worker), starting now.
 * `readers`: the front's filter readers, among which this thread registers before it subscribes (so the front
 * reuses no buffer it may read) and then tells each publication taken; null for a thread whose publisher
 * reuses no memory, as in tests.
 */
export function followPublishedFilters(filters: readonly IdFilters[], readers: FilterReaders | null): void {
  if (filters.length === 0) return;
  const reader = readers?.join() ?? null;
  const channel = new BroadcastChannel(DEDUP_FILTERS_CHANNEL);
  channel.onmessage = (event) => {
    const data = (event as unknown as { data: FilterPublication | typeof DEDUP_FILTERS_WANTED }).data;
    if (data === DEDUP_FILTERS_WANTED) return; // another worker's
    for (const f of filters) f.set(data.filters);
    // check() reads the filters synchronously and set() replaced them all: the old buffers are free now.
    reader?.took(data.seq);
  };
  (channel as unknown as { unref(): void }).unref(); // after onmessage, which refs it
  channel.postMessage(DEDUP_FILTERS_WANTED);
}

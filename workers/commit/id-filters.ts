/**
 * A worker's copy of the Bloom filters of one stream's sealed id-state partitions (docs/storage.md#deduplication):
 * reloaded from the slots table at most every REFRESH_MS, checked before each claim so that PostgreSQL probes a
 * sealed partition only for the ids that hit its filter. A partition whose filter this worker has not loaded
 * yet is simply probed for every id: a stale copy costs time, never correctness.
 */
import type pg from "pg";
import { DedupFilter, hashKey } from "../../src/shared/dedup-filter";
import { now } from "../../src/shared/clock";

const REFRESH_MS = 30_000;

export interface FilterCheck {
  /** Each key that hit a filter, once per filter it hit (null without filters). */
  maybe: string[] | null;
  /** The 1-based position in `covered` of the filter each `maybe` key hit. */
  slots: number[] | null;
  /** Lower bounds (ISO-8601) of the partitions whose filters were checked (null without filters). */
  covered: string[] | null;
}

export class IdFilters {
  private filters: DedupFilter[] = [];
  private lowers: string[] = [];
  private byLower = new Map<string, DedupFilter>();
  private loadedAt = -Infinity;
  private readonly h = new Uint32Array(3);

  constructor(private readonly slotsTable: string) {}

  /** Loads the filters built since the last look, forgets those of dropped partitions. */
  async refresh(client: pg.ClientBase): Promise<void> {
    if (now() - this.loadedAt < REFRESH_MS) return;
    this.loadedAt = now();
    const { rows } = await client.query<{ lower: Date }>(`SELECT lower FROM ${this.slotsTable} WHERE filter IS NOT NULL ORDER BY lower`);
    const next = new Map<string, DedupFilter>();
    const missing: string[] = [];
    for (const r of rows) {
      const lower = r.lower.toISOString();
      const have = this.byLower.get(lower);
      if (have) next.set(lower, have);
      else missing.push(lower);
    }
    if (missing.length > 0) {
      const loaded = await client.query<{ lower: Date; filter: Buffer }>(
        `SELECT lower, filter FROM ${this.slotsTable} WHERE lower = ANY($1::timestamptz[])`,
        [missing],
      );
      for (const r of loaded.rows) next.set(r.lower.toISOString(), new DedupFilter(r.filter));
    }
    this.byLower = next;
    this.lowers = [...next.keys()];
    this.filters = [...next.values()];
  }

  check(keys: readonly string[]): FilterCheck {
    if (this.filters.length === 0) return { maybe: null, slots: null, covered: null };
    const maybe: string[] = [];
    const slots: number[] = [];
    const filters = this.filters;
    const h = this.h;
    for (let i = 0; i < keys.length; i++) {
      hashKey(keys[i], h);
      for (let f = 0; f < filters.length; f++) {
        if (filters[f].hasHashed(h)) {
          maybe.push(keys[i]);
          slots.push(f + 1);
        }
      }
    }
    return { maybe, slots, covered: this.lowers };
  }
}

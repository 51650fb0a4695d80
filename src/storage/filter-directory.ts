/**
 * The front thread's copy of the filters of every deduplicating stream's sealed id-state generations
 * (docs/storage.md#deduplication): loaded from the slots tables at start and after each maintenance step into shared
 * memory (a group's filter instead of those of its generations), forgotten when their generations are
 * dropped, and published whole to the workers on
 * DEDUP_FILTERS_CHANNEL. One copy per process, whatever the number of workers; a worker started since the
 * last pass gets them at the next (until then it probes every sealed generation: slower, never wrong). Within
 * a budget (`dedupFilterMb`, docs/storage.md#filter-memory): past it the oldest are folded, then left out.
 */
import { BroadcastChannel } from "node:worker_threads";
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { DedupFilter } from "../shared/dedup-filter";
import { DEDUP_FILTER_IDENT as FILTER, dedupShape } from "../shared/dedup-sql";
import type { StreamDefinition } from "../shared/stream-definition";
import { DEDUP_FILTERS_CHANNEL, DEDUP_FILTERS_WANTED, type PublishedFilter } from "../shared/task-protocol";
import { binaryCopyRowsAt } from "./dedup-filters";

/** Bytes of a filter read per COPY: a group's filter is up to tens of MiB, never held twice whole. */
const LOAD_CHUNK_BYTES = 1 << 20;

/**
 * One filter's bytes into shared memory, LOAD_CHUNK_BYTES at a time, each slice by a binary COPY: raw bytes,
 * where a bytea in a query result arrives as hex text (twice the bytes, then decoded: measured ~1.3 s of the
 * front thread's CPU for 60 MiB of filters, docs/storage.md#filter-memory). `table` and `column` name the row
 * (`column` = `id`, an integer of the slots or groups table). Null: gone meanwhile.
 */
async function loadFilter(client: pg.ClientBase, table: string, column: "gen" | "grp", id: number): Promise<DedupFilter | null> {
  if (!Number.isSafeInteger(id)) throw new Error(`${table}: ${column} ${id} is not an integer`);
  const size = await client.query<{ n: number | null }>(`SELECT octet_length(${FILTER}) AS n FROM ${table} WHERE ${column} = $1`, [id]);
  const bytes = size.rows[0]?.n ?? null;
  if (bytes === null) return null;
  const words = new SharedArrayBuffer(bytes);
  const into = new Uint8Array(words);
  for (let at = 0; at < bytes; at += LOAD_CHUNK_BYTES) {
    // COPY takes no parameters: the id is an integer checked above, the names are quoted identifiers.
    const slice = await copyOutField(
      client,
      `COPY (SELECT substring(${FILTER} FROM ${at + 1} FOR ${LOAD_CHUNK_BYTES}) FROM ${table} WHERE ${column} = ${id}) TO STDOUT (FORMAT binary)`,
    );
    if (slice === null || slice.length !== Math.min(LOAD_CHUNK_BYTES, bytes - at)) return null;
    into.set(slice, at);
  }
  return new DedupFilter(words);
}

/** The one field of the one row a binary COPY sends, or null when it sent no row or a null (PostgreSQL's COPY docs, "Binary Format"). */
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

/**
 * Times a filter may be folded in half to fit the budget: built with 16-bit fingerprints, folded to 8 (about
 * 2.9% false positives); a filter of 8-bit fingerprints cannot be folded again, and is left out instead.
 */
const MAX_FOLDS = 1;

/** A filter held, the stream's slots table and the generations whose keys it holds (as published), and its folds. */
interface Held {
  filter: DedupFilter;
  slots: string;
  gens: number[];
  folds: number;
}

export interface FilterDirectorySize {
  /** Filters held (a group's counts once). */
  count: number;
  /** Their bytes, one shared copy for every worker. */
  bytes: number;
  /** Of those, the filters folded to fit the budget. */
  folded: number;
  /** Sealed generations left without a filter by the budget: probed in PostgreSQL for every id. */
  unfiltered: number;
}

export class FilterDirectory {
  /** By `<slots table> g<gen>` (one generation) or `<slots table> G<grp>` (a group). */
  private held = new Map<string, Held>();
  /** Filters the budget left out: not loaded again (a filter never changes; it goes with its generations). */
  private leftOut = new Map<string, number>();
  private readonly channel = new BroadcastChannel(DEDUP_FILTERS_CHANNEL);
  /** Whether a refresh has run: before it the directory holds nothing worth telling a worker. */
  private refreshed = false;

  /** `budgetBytes`: what the filters may hold at most (`dedupFilterMb`, docs/storage.md#filter-memory). */
  constructor(
    private readonly schema: string,
    private readonly streams: readonly StreamDefinition[],
    private readonly budgetBytes = Number.POSITIVE_INFINITY,
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
   * first, within the budget: past it the oldest filters are folded in half, then left out.
   */
  async refresh(client: pg.ClientBase): Promise<void> {
    const wanted: { key: string; slots: string; table: string; column: "gen" | "grp"; id: number; gens: number[] }[] = [];
    for (const stream of this.streams) {
      const d = dedupShape(this.schema, stream);
      if (d === null) continue;
      const groups = await client.query<{ grp: number; gens: number[] }>(`SELECT grp, gens FROM ${d.groups}`);
      const filtered = await client.query<{ gen: number }>(`SELECT gen FROM ${d.slots} WHERE ${FILTER} IS NOT NULL`);
      const grouped = new Set(groups.rows.flatMap((g) => g.gens));
      for (const g of groups.rows)
        wanted.push({ key: `${d.slots} G${g.grp}`, slots: d.slots, table: d.groups, column: "grp", id: g.grp, gens: g.gens });
      for (const r of filtered.rows) {
        if (!grouped.has(r.gen))
          wanted.push({ key: `${d.slots} g${r.gen}`, slots: d.slots, table: d.slots, column: "gen", id: r.gen, gens: [r.gen] });
      }
    }
    // Newest first (several streams share the budget, taken by generation number).
    wanted.sort((a, b) => Math.max(...b.gens) - Math.max(...a.gens));
    const next = new Map<string, Held>();
    const leftOut = new Map<string, number>();
    let bytes = 0;
    for (const w of wanted) {
      if (this.leftOut.has(w.key) || leftOut.size > 0) {
        leftOut.set(w.key, w.gens.length); // older than one the budget left out: left out too
        continue;
      }
      let h = this.held.get(w.key);
      if (h === undefined) {
        const filter = await loadFilter(client, w.table, w.column, w.id);
        if (filter === null) continue;
        h = { filter, slots: w.slots, gens: w.gens, folds: 0 };
      }
      next.set(w.key, h);
      bytes += h.filter.byteLength;
      bytes = this.fit(next, bytes, leftOut);
    }
    this.held = next;
    this.leftOut = leftOut;
    this.refreshed = true;
  }

  /** Folds the oldest filters that can be, then leaves out the oldest, until `next` fits the budget; its bytes. */
  private fit(next: Map<string, Held>, bytes: number, leftOut: Map<string, number>): number {
    while (bytes > this.budgetBytes && next.size > 0) {
      const held = [...next.entries()].reverse(); // oldest first
      const fold = held.find(([, h]) => h.folds < MAX_FOLDS && h.filter.foldable);
      if (fold) {
        const [key, h] = fold;
        const filter = h.filter.fold();
        bytes -= h.filter.byteLength - filter.byteLength;
        next.set(key, { ...h, filter, folds: h.folds + 1 });
        continue;
      }
      const [key, h] = held[0];
      next.delete(key);
      leftOut.set(key, h.gens.length);
      bytes -= h.filter.byteLength;
    }
    return bytes;
  }

  /** Every filter held, for the workers (they replace what they had). */
  list(): PublishedFilter[] {
    return [...this.held.values()].map((h) => ({ slots: h.slots, gens: h.gens, words: h.filter.shared }));
  }

  publish(): void {
    this.channel.postMessage(this.list());
  }

  size(): FilterDirectorySize {
    let bytes = 0;
    let folded = 0;
    for (const h of this.held.values()) {
      bytes += h.filter.byteLength;
      if (h.folds > 0) folded++;
    }
    let unfiltered = 0;
    for (const gens of this.leftOut.values()) unfiltered += gens;
    return { count: this.held.size, bytes, folded, unfiltered };
  }

  close(): void {
    this.channel.close();
  }
}

/**
 * The front thread's copy of the Bloom filters of every deduplicating stream's sealed id-state generations
 * (docs/storage.md#deduplication): loaded from the slots tables after each maintenance pass into shared
 * memory (a group's filter instead of those of its generations), forgotten when their generations are
 * dropped, and published whole to the workers on
 * DEDUP_FILTERS_CHANNEL. One copy per process, whatever the number of workers; a worker started since the
 * last pass gets them at the next (until then it probes every sealed generation: slower, never wrong).
 */
import { BroadcastChannel } from "node:worker_threads";
import type pg from "pg";
import { DedupFilter } from "../shared/dedup-filter";
import { dedupShape } from "../shared/dedup-sql";
import type { StreamDefinition } from "../shared/stream-definition";
import { DEDUP_FILTERS_CHANNEL, type PublishedFilter } from "../shared/task-protocol";

/** Bytes of a filter read per query: a bytea arrives as hex text, twice its size. */
const LOAD_CHUNK_BYTES = 4 << 20;

/**
 * One filter's bytes into shared memory, in slices of LOAD_CHUNK_BYTES (a group's filter is tens of MiB: read
 * whole, it would be held as hex text, then bytes, then shared words at once). `table` and `where` name the
 * row (`$1`). Null: gone meanwhile.
 */
async function loadFilter(client: pg.ClientBase, table: string, where: string, key: number): Promise<SharedArrayBuffer | null> {
  const size = await client.query<{ n: number | null }>(`SELECT octet_length(filter) AS n FROM ${table} WHERE ${where}`, [key]);
  const bytes = size.rows[0]?.n ?? null;
  if (bytes === null) return null;
  const words = new SharedArrayBuffer(bytes);
  const into = new Uint8Array(words);
  for (let at = 0; at < bytes; at += LOAD_CHUNK_BYTES) {
    const { rows } = await client.query<{ part: Buffer | null }>(
      `SELECT substring(filter FROM $2 FOR $3) AS part FROM ${table} WHERE ${where}`,
      [key, at + 1, LOAD_CHUNK_BYTES],
    );
    if (rows.length === 0 || rows[0].part === null) return null;
    into.set(rows[0].part, at);
  }
  return new DedupFilter(words).shared;
}

export class FilterDirectory {
  /** By `<slots table> g<gen>` (one generation) or `<slots table> G<grp>` (a group). */
  private held = new Map<string, PublishedFilter>();
  private readonly channel = new BroadcastChannel(DEDUP_FILTERS_CHANNEL);

  constructor(
    private readonly schema: string,
    private readonly streams: readonly StreamDefinition[],
  ) {
    (this.channel as unknown as { unref(): void }).unref();
  }

  /**
   * Loads the filters built since the last pass and forgets the others: each group's, and each sealed
   * generation's that belongs to no group (a grouped generation's own filter would only cost memory).
   */
  async refresh(client: pg.ClientBase): Promise<void> {
    const next = new Map<string, PublishedFilter>();
    for (const stream of this.streams) {
      const d = dedupShape(this.schema, stream);
      if (d === null) continue;
      const groups = await client.query<{ grp: number; gens: number[] }>(`SELECT grp, gens FROM ${d.groups}`);
      const filtered = await client.query<{ gen: number }>(`SELECT gen FROM ${d.slots} WHERE filter IS NOT NULL`);
      const grouped = new Set(groups.rows.flatMap((g) => g.gens));
      const wanted = [
        ...groups.rows.map((g) => ({ key: `${d.slots} G${g.grp}`, table: d.groups, where: "grp = $1", id: g.grp, gens: g.gens })),
        ...filtered.rows
          .filter((r) => !grouped.has(r.gen))
          .map((r) => ({ key: `${d.slots} g${r.gen}`, table: d.slots, where: "gen = $1", id: r.gen, gens: [r.gen] })),
      ];
      for (const w of wanted) {
        const have = this.held.get(w.key);
        if (have) {
          next.set(w.key, have);
          continue;
        }
        const words = await loadFilter(client, w.table, w.where, w.id);
        if (words) next.set(w.key, { slots: d.slots, gens: w.gens, words });
      }
    }
    this.held = next;
  }

  /** Every filter held, for the workers (they replace what they had). */
  list(): PublishedFilter[] {
    return [...this.held.values()];
  }

  publish(): void {
    this.channel.postMessage(this.list());
  }

  /** Filters held, and their bytes (shared with every worker). */
  size(): { count: number; bytes: number } {
    let bytes = 0;
    for (const f of this.held.values()) bytes += f.words.byteLength;
    return { count: this.held.size, bytes };
  }

  close(): void {
    this.channel.close();
  }
}

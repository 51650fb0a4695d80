/**
 * Fills a deduplicating stream's id state with ids as real traffic would have left them: `count` ids spread
 * evenly over the window before now, each in the partition of the slot it was first stored in
 * (docs/storage.md#deduplication). The ids are made by PostgreSQL itself (gen_random_uuid() for UUIDv4,
 * uuidv7() shifted to the id's stored time for UUIDv7, PostgreSQL 18), inserted in key order partition by
 * partition, so 20 million take minutes, not hours; then the sealed partitions' filters are built, as the
 * daemon's partition maintenance would have. Outside any timed phase.
 */
import pg from "pg";
import { DEDUP_KEY_COLUMN, DEDUP_STORED_AT_COLUMN, dedupShape } from "../src/shared/dedup-sql";
import { quoteIdent } from "../src/shared/sql-identifiers";
import type { StreamDefinition } from "../src/shared/stream-definition";
import { ensureDedupHistory, maintainDedupState } from "../src/storage/dedup-partitions";
import { DEFAULT_DEDUP_WINDOW_HOURS } from "../src/storage/schema";

/** Ids per INSERT: each statement sorts its ids, so the index is filled in order and stays compact. */
const CHUNK = 1_000_000;

export async function prefillIdState(
  url: string,
  schema: string,
  stream: StreamDefinition,
  count: number,
  kind: "uuidv4" | "uuidv7",
  windowHours = DEFAULT_DEDUP_WINDOW_HOURS,
): Promise<void> {
  const d = dedupShape(schema, stream);
  if (d === null) throw new Error(`stream ${stream.name} has no id to deduplicate by`);
  const client = new pg.Client({ connectionString: url, application_name: "ingestd-bench-prefill" });
  await client.connect();
  try {
    const now = new Date();
    await ensureDedupHistory(client, schema, stream, windowHours, now);
    const windowStart = now.getTime() - windowHours * 3600_000;
    const { rows: slots } = await client.query<{ part: string; lower: Date; upper: Date }>(
      `SELECT part, lower, upper FROM ${d.slots} WHERE upper > $1 AND lower < $2 ORDER BY lower`,
      [new Date(windowStart).toISOString(), now.toISOString()],
    );
    const span = now.getTime() - windowStart;
    let left = count;
    for (let i = 0; i < slots.length; i++) {
      const from = Math.max(slots[i].lower.getTime(), windowStart);
      const to = Math.min(slots[i].upper.getTime(), now.getTime());
      // The slot's share of the window's ids, the last slot taking the rounding.
      let n = i === slots.length - 1 ? left : Math.round((count * (to - from)) / span);
      left -= n;
      while (n > 0) {
        const chunk = Math.min(n, CHUNK);
        // stored_at spread over the slot's share of the window; a UUIDv7 carries that same time.
        const id = kind === "uuidv4" ? "gen_random_uuid()" : "uuidv7(t - now())";
        await client.query(
          `INSERT INTO ${slots[i].part} (${quoteIdent(DEDUP_KEY_COLUMN)}, ${quoteIdent(DEDUP_STORED_AT_COLUMN)})
           SELECT k, t FROM (
             SELECT ${id} AS k, t FROM (
               SELECT $1::timestamptz + random() * ($2::timestamptz - $1::timestamptz) AS t FROM generate_series(1, $3)
             ) times
           ) ids ORDER BY k
           ON CONFLICT DO NOTHING`,
          [new Date(from).toISOString(), new Date(to).toISOString(), chunk],
        );
        n -= chunk;
      }
    }
    // What autovacuum would have done to a week-old id state: visibility map set, statistics current; and
    // what partition maintenance would have: the filters of the sealed partitions.
    await client.query(`VACUUM (ANALYZE) ${d.ids}`);
    await maintainDedupState(client, schema, [stream], windowHours, now);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Fills a deduplicating stream's id state with ids as real traffic would have left them: `count` ids in sealed
 * generations of 400,000 ids (a little less than a rotation leaves) spread evenly over the
 * window before now, the open generation empty as after a rotation (docs/storage.md#deduplication). The ids
 * are made by PostgreSQL itself (gen_random_uuid() for UUIDv4, uuidv7() shifted into the generation's time
 * span for UUIDv7, PostgreSQL 18), inserted in key order generation by generation, so 20 million take minutes,
 * not hours; then the sealed generations' filters are built, as the daemon's maintenance would have. Outside
 * any timed phase.
 */
import pg from "pg";
import { DEDUP_GEN_COLUMN, DEDUP_KEY_COLUMN, dedupShape } from "../src/shared/dedup-sql";
import { quoteIdent } from "../src/shared/sql-identifiers";
import type { StreamDefinition } from "../src/shared/stream-definition";
import { createGeneration, maintainDedupState } from "../src/storage/dedup-partitions";
import { locked } from "../src/storage/partitions";
import { DEFAULT_DEDUP_WINDOW_HOURS } from "../src/storage/schema";

/** Ids per sealed generation: a little less than a rotation at a 16 MiB index leaves (about 420,000 random ids). */
const GENERATION_IDS = 400_000;

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
    const now = Date.now();
    const generations = Math.max(1, Math.ceil(count / GENERATION_IDS));
    // The window's span, less a minute, shared evenly: the newest sealed a minute before now.
    const span = (windowHours * 3600_000 - 60_000) / generations;
    const from0 = now - windowHours * 3600_000;
    let left = count;
    for (let i = 0; i < generations; i++) {
      const n = Math.min(left, GENERATION_IDS);
      left -= n;
      const openedAt = new Date(from0 + i * span);
      const sealedAt = new Date(from0 + (i + 1) * span);
      const { gen, part } = await locked(client, () => createGeneration(client, schema, stream, { openedAt, sealedAt }));
      // A UUIDv7 carries a time within the generation's span.
      const id =
        kind === "uuidv4" ? "gen_random_uuid()" : "uuidv7(($3::timestamptz + random() * ($4::timestamptz - $3::timestamptz)) - now())";
      await client.query(
        `INSERT INTO ${part} (${quoteIdent(DEDUP_KEY_COLUMN)}, ${quoteIdent(DEDUP_GEN_COLUMN)})
         SELECT k, $2 FROM (SELECT ${id} AS k FROM generate_series(1, $1)) ids ORDER BY k
         ON CONFLICT DO NOTHING`,
        kind === "uuidv4" ? [n, gen] : [n, gen, openedAt.toISOString(), sealedAt.toISOString()],
      );
    }
    // What autovacuum would have done to a week-old id state: visibility map set, statistics current; and
    // what the maintenance would have: the filters of the sealed generations (below the filter budget no group
    // is sealed; docs/storage.md#sealed-group-filters).
    await client.query(`VACUUM (ANALYZE) ${d.ids}`);
    await maintainDedupState(client, schema, [stream], windowHours, new Date(now));
  } finally {
    await client.end().catch(() => undefined);
  }
}

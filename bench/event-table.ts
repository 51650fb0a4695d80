/**
 * The bench's view of the `events` table: created exactly as the daemon creates it (src/storage/schema.ts), emptied
 * between phases, and counted by id prefix to verify that rows stored equal events acknowledged.
 */
import pg from "pg";
import { streams } from "../config/streams";
import { ensureSchema } from "../src/storage/schema";
import { dedupTable, qualifiedName } from "../src/shared/sql-identifiers";
import type { StreamDefinition } from "../src/shared/stream-definition";
import type { BenchDb } from "./bench-db";

export const BENCH_STREAM = "events";

export function benchStream(): StreamDefinition {
  const s = streams.find((d) => d.name === BENCH_STREAM);
  if (!s) throw new Error(`stream "${BENCH_STREAM}" is not in config/streams`);
  return s;
}

export async function createSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await ensureSchema(client, schema, streams);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Empties the table (and its id table, when the stream deduplicates) and checkpoints, so every phase starts
 * from the same empty table and a clean WAL position rather than paying for the previous phase's checkpoint.
 */
export async function resetTable(db: BenchDb, schema: string): Promise<void> {
  const stream = benchStream();
  const tables = [qualifiedName(schema, stream.table)];
  const dedup = await db.query<{ t: string | null }>("SELECT to_regclass($1)::text AS t", [`${schema}.${dedupTable(stream.table)}`]);
  if (dedup.rows[0].t !== null) tables.push(qualifiedName(schema, dedupTable(stream.table)));
  await db.query(`TRUNCATE ${tables.join(", ")}`);
  await db.query("CHECKPOINT").catch(() => undefined); // needs superuser or pg_checkpoint on a real server
}

/** Rows whose event_id starts with `prefix` (prefixes never hold LIKE wildcards). */
export async function countByPrefix(db: BenchDb, schema: string, prefix: string): Promise<number> {
  if (/[%_\\]/.test(prefix)) throw new Error(`prefix with LIKE wildcards: ${prefix}`);
  const stream = benchStream();
  const r = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${qualifiedName(schema, stream.table)} WHERE event_id LIKE $1`, [
    `${prefix}%`,
  ]);
  return Number(r.rows[0].n);
}

export async function countDistinctByPrefix(db: BenchDb, schema: string, prefix: string): Promise<number> {
  const stream = benchStream();
  const r = await db.query<{ n: string }>(
    `SELECT count(DISTINCT event_id) AS n FROM ${qualifiedName(schema, stream.table)} WHERE event_id LIKE $1`,
    [`${prefix}%`],
  );
  return Number(r.rows[0].n);
}

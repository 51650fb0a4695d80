/**
 * The partitions of the deduplicating streams' id state (docs/storage.md#deduplication): one per slot, a slot
 * being an eighth of `dedupWindowHours` (at least an hour), aligned on the Unix epoch so every daemon computes
 * the same boundaries. Created two slots ahead, dropped once they end more than a window ago: an id is
 * remembered at least the window after it was first stored, and forgetting it costs a DROP TABLE.
 * Callers hold the schema advisory lock (src/storage/partitions.ts).
 */
import type pg from "pg";
import type { StreamDefinition } from "../shared/stream-definition";
import { dedupTable, qualifiedName, quoteIdent } from "../shared/sql-identifiers";
import { DEDUP_KEY_COLUMN, DEDUP_STORED_AT_COLUMN, dedupShape } from "../shared/dedup-sql";
import { dedupKeySql } from "../shared/dedup-key";
import { locked } from "./partitions";
import { buildDedupFilters } from "./dedup-filters";

/** Slots per window: more make the current partition smaller, and the filters a worker checks per id more. */
export const SLOTS_PER_WINDOW = 8;

export function dedupSlotSeconds(windowHours: number): number {
  return Math.max(3600, Math.floor((windowHours * 3600) / SLOTS_PER_WINDOW));
}

function slotLabel(at: Date): string {
  return at
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "");
}

/** The partition name of the slot starting at `lower`: `<table>_dedup_20261203T000000`. */
export function dedupPartitionName(table: string, lower: Date): string {
  return `${dedupTable(table)}_${slotLabel(lower)}`;
}

export interface DedupSlot {
  stream: string;
  partition: string;
  lower: Date;
  upper: Date;
  filtered: boolean;
}

export async function listDedupSlots(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<DedupSlot[]> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ part: string; lower: Date; upper: Date; filtered: boolean }>(
    `SELECT part, lower, upper, filter IS NOT NULL AS filtered FROM ${d.slots} ORDER BY lower`,
  );
  return rows.map((r) => ({ stream: stream.name, partition: r.part, lower: r.lower, upper: r.upper, filtered: r.filtered }));
}

/**
 * Creates the partitions of the slots from the last one's end (or the slot holding `at`, if that is later)
 * up to two slots past `at`. Returns the partitions created.
 */
export async function ensureDedupSlots(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  windowHours: number,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const width = dedupSlotSeconds(windowHours) * 1000;
  const { rows } = await client.query<{ upper: Date | null }>(`SELECT max(upper) AS upper FROM ${d.slots}`);
  const aligned = Math.floor(at.getTime() / width) * width;
  let lower = Math.max(rows[0].upper?.getTime() ?? 0, aligned);
  const created: string[] = [];
  while (lower < at.getTime() + 2 * width) {
    const upper = lower + width;
    const name = dedupPartitionName(stream.table, new Date(lower));
    const part = qualifiedName(schema, name);
    const from = new Date(lower).toISOString();
    const to = new Date(upper).toISOString();
    await client.query(`CREATE TABLE ${part} PARTITION OF ${d.ids} FOR VALUES FROM ('${from}') TO ('${to}')`);
    // The key alone is unique within a partition; the parent cannot hold such an index (it lacks stored_at).
    await client.query(`CREATE UNIQUE INDEX ON ${part} (${quoteIdent(DEDUP_KEY_COLUMN)})`);
    await client.query(`INSERT INTO ${d.slots} (lower, upper, part) VALUES ($1, $2, $3)`, [from, to, part]);
    created.push(name);
    lower = upper;
  }
  return created;
}

/** Drops the partitions whose slot ended more than the window before `at` (never the current one). */
export async function dropExpiredDedupSlots(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  windowHours: number,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const cutoff = new Date(at.getTime() - windowHours * 3600_000);
  const { rows } = await client.query<{ part: string; lower: Date }>(
    `SELECT part, lower FROM ${d.slots} WHERE upper <= $1 AND upper <= $2 ORDER BY lower`,
    [cutoff.toISOString(), at.toISOString()],
  );
  for (const r of rows) {
    await client.query(`DROP TABLE IF EXISTS ${r.part}`);
    await client.query(`DELETE FROM ${d.slots} WHERE lower = $1`, [r.lower]);
  }
  return rows.map((r) => dedupPartitionName(stream.table, r.lower));
}

/** DDL of the id state (the partitions themselves come from ensureDedupSlots). */
export function dedupStateDdl(schema: string, stream: StreamDefinition): string[] {
  const d = dedupShape(schema, stream)!;
  return [
    `CREATE TABLE IF NOT EXISTS ${d.ids} (${quoteIdent(DEDUP_KEY_COLUMN)} uuid NOT NULL, ${quoteIdent(DEDUP_STORED_AT_COLUMN)} timestamptz NOT NULL)
  PARTITION BY RANGE (${quoteIdent(DEDUP_STORED_AT_COLUMN)})`,
    `CREATE TABLE IF NOT EXISTS ${d.slots} (lower timestamptz PRIMARY KEY, upper timestamptz NOT NULL UNIQUE, part text NOT NULL, filter bytea)`,
  ];
}

/**
 * An id table of the shape before the window (`<table>_dedup` with the id as primary key, unpartitioned) is
 * renamed out of the way; migrateLegacyIds then moves its ids into the current partition. Returns whether
 * there was one.
 */
export async function renameLegacyIdTable(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<boolean> {
  const { rows } = await client.query<{ kind: string }>(
    `SELECT c.relkind AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, dedupTable(stream.table)],
  );
  if (rows.length === 0 || rows[0].kind !== "r") return false;
  await client.query(
    `ALTER TABLE ${qualifiedName(schema, dedupTable(stream.table))} RENAME TO ${quoteIdent(`${dedupTable(stream.table)}_legacy`)}`,
  );
  return true;
}

/**
 * Copies the old table's ids into the current slot's partition, as if first stored now (so each is remembered
 * at least a window from now, never less than before), then drops the old table. Runs once, at the start that
 * finds the old shape.
 */
export async function migrateLegacyIds(client: pg.ClientBase, schema: string, stream: StreamDefinition, at = new Date()): Promise<number> {
  const d = dedupShape(schema, stream)!;
  const legacy = qualifiedName(schema, `${dedupTable(stream.table)}_legacy`);
  const { rows } = await client.query<{ part: string }>(`SELECT part FROM ${d.slots} WHERE lower <= $1 AND $1 < upper`, [at.toISOString()]);
  const id = quoteIdent(stream.dedupKey!);
  const moved = await client.query(
    `INSERT INTO ${rows[0].part} (${quoteIdent(DEDUP_KEY_COLUMN)}, ${quoteIdent(DEDUP_STORED_AT_COLUMN)})
     SELECT DISTINCT ${dedupKeySql(`${id}::text`)}, $1::timestamptz FROM ${legacy} ORDER BY 1
     ON CONFLICT DO NOTHING`,
    [at.toISOString()],
  );
  await client.query(`DROP TABLE ${legacy}`);
  return moved.rowCount ?? 0;
}

/** One maintenance pass over every deduplicating stream's id state, under the schema lock. */
export async function maintainDedupState(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  windowHours: number,
  at = new Date(),
): Promise<{ created: string[]; dropped: string[]; filtered: string[] }> {
  const created: string[] = [];
  const dropped: string[] = [];
  const filtered: string[] = [];
  for (const stream of streams.filter((s) => s.dedupKey !== undefined)) {
    await locked(client, async () => {
      created.push(...(await ensureDedupSlots(client, schema, stream, windowHours, at)));
      dropped.push(...(await dropExpiredDedupSlots(client, schema, stream, windowHours, at)));
    });
    filtered.push(...(await buildDedupFilters(client, schema, stream, at)));
  }
  return { created, dropped, filtered };
}

/**
 * Creates the partitions of the slots of the whole window before `at` that are missing below the oldest
 * existing one (a bench that fills the id state as past traffic would have left it).
 */
export async function ensureDedupHistory(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  windowHours: number,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const width = dedupSlotSeconds(windowHours) * 1000;
  return locked(client, async () => {
    const created = await ensureDedupSlots(client, schema, stream, windowHours, at);
    const { rows } = await client.query<{ lower: Date }>(`SELECT min(lower) AS lower FROM ${d.slots}`);
    const oldest = rows[0].lower.getTime();
    for (let lower = Math.floor((at.getTime() - windowHours * 3600_000) / width) * width; lower < oldest; lower += width) {
      const upper = Math.min(lower + width, oldest);
      const name = dedupPartitionName(stream.table, new Date(lower));
      const part = qualifiedName(schema, name);
      const from = new Date(lower).toISOString();
      const to = new Date(upper).toISOString();
      await client.query(`CREATE TABLE ${part} PARTITION OF ${d.ids} FOR VALUES FROM ('${from}') TO ('${to}')`);
      await client.query(`CREATE UNIQUE INDEX ON ${part} (${quoteIdent(DEDUP_KEY_COLUMN)})`);
      await client.query(`INSERT INTO ${d.slots} (lower, upper, part) VALUES ($1, $2, $3)`, [from, to, part]);
      created.push(name);
    }
    return created;
  });
}

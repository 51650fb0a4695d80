/**
 * Retention of the daemon's own tables, `ingest_batches` (by `committed_at`) and `ingest_dead_letters` (by
 * `received_at`): range-partitioned by UTC day, partitions created two days ahead, and those of days older than
 * the configured retention dropped whole (docs/storage.md#retention-of-ingestds-own-tables). A default partition
 * catches a row whose time (the daemon's clock) falls outside every day partition; it is never dropped.
 * Callers hold the schema advisory lock (src/storage/partitions.ts).
 */
import type pg from "pg";
import { BATCHES_TABLE, DEAD_LETTERS_TABLE, qualifiedName, quoteIdent } from "../shared/sql-identifiers";
import { locked } from "./partitions";

export interface BookkeepingTable {
  table: string;
  /** The column partitions are by. */
  time: string;
}

export const BOOKKEEPING_TABLES: readonly BookkeepingTable[] = [
  { table: BATCHES_TABLE, time: "committed_at" },
  { table: DEAD_LETTERS_TABLE, time: "received_at" },
];

const DAY_MS = 86_400_000;
const DAY_PARTITION = /_d(\d{4})(\d{2})(\d{2})$/;

function dayName(table: string, day: number): string {
  return `${table}_d${new Date(day).toISOString().slice(0, 10).replace(/-/g, "")}`;
}

async function childrenOf(client: pg.ClientBase, schema: string, table: string): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
       JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = $1 AND p.relname = $2 ORDER BY c.relname`,
    [schema, table],
  );
  return rows.map((r) => r.name);
}

/**
 * Creates the day partitions from `fromDays` days before `at` to two days after, moving rows for those days
 * out of the default partition first (PostgreSQL refuses a partition whose range the default holds rows of).
 */
export async function ensureDayPartitions(
  client: pg.ClientBase,
  schema: string,
  t: BookkeepingTable,
  at = new Date(),
  fromDays = 0,
): Promise<string[]> {
  const existing = new Set(await childrenOf(client, schema, t.table));
  const today = Math.floor(at.getTime() / DAY_MS) * DAY_MS;
  const parent = qualifiedName(schema, t.table);
  const defaultPart = qualifiedName(schema, `${t.table}_default`);
  const time = quoteIdent(t.time);
  const created: string[] = [];
  for (let day = today - fromDays * DAY_MS; day <= today + 2 * DAY_MS; day += DAY_MS) {
    const name = dayName(t.table, day);
    if (existing.has(name)) continue;
    const from = new Date(day).toISOString();
    const to = new Date(day + DAY_MS).toISOString();
    const part = qualifiedName(schema, name);
    await client.query(`CREATE TABLE ${part} (LIKE ${parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`);
    await client.query(
      `WITH moved AS (DELETE FROM ${defaultPart} WHERE ${time} >= '${from}' AND ${time} < '${to}' RETURNING *)
       INSERT INTO ${part} OVERRIDING SYSTEM VALUE SELECT * FROM moved`,
    );
    await client.query(`ALTER TABLE ${parent} ATTACH PARTITION ${part} FOR VALUES FROM ('${from}') TO ('${to}')`);
    created.push(name);
  }
  return created;
}

/** Drops the day partitions of days that ended more than `days` days before `at` (never today's). */
export async function dropDayPartitionsOlderThan(
  client: pg.ClientBase,
  schema: string,
  t: BookkeepingTable,
  days: number,
  at = new Date(),
): Promise<string[]> {
  const cutoff = at.getTime() - days * DAY_MS;
  const dropped: string[] = [];
  for (const name of await childrenOf(client, schema, t.table)) {
    const m = DAY_PARTITION.exec(name);
    if (!m) continue;
    const end = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) + DAY_MS;
    if (end > cutoff || end > at.getTime()) continue;
    await client.query(`DROP TABLE ${qualifiedName(schema, name)}`);
    dropped.push(name);
  }
  return dropped;
}

/**
 * A table of the shape before partitioning (a plain table) is renamed out of the way so the partitioned one
 * can be created; migrateLegacyRows then copies its rows still within retention over. Returns whether there was one.
 */
export async function renameLegacyTable(client: pg.ClientBase, schema: string, t: BookkeepingTable): Promise<boolean> {
  const { rows } = await client.query<{ kind: string }>(
    `SELECT c.relkind AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, t.table],
  );
  if (rows.length === 0 || rows[0].kind !== "r") return false;
  await client.query(`ALTER TABLE ${qualifiedName(schema, t.table)} RENAME TO ${quoteIdent(`${t.table}_legacy`)}`);
  // Its indexes keep their names; the partitioned table's own must be free to take them.
  const { rows: indexes } = await client.query<{ name: string }>(
    `SELECT i.relname AS name FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, `${t.table}_legacy`],
  );
  for (const { name } of indexes) {
    await client.query(`ALTER INDEX ${qualifiedName(schema, name)} RENAME TO ${quoteIdent(`${name}_legacy`.slice(0, 63))}`);
  }
  return true;
}

export async function migrateLegacyRows(
  client: pg.ClientBase,
  schema: string,
  t: BookkeepingTable,
  days: number,
  at = new Date(),
): Promise<void> {
  const legacy = qualifiedName(schema, `${t.table}_legacy`);
  await ensureDayPartitions(client, schema, t, at, days);
  await client.query(
    `INSERT INTO ${qualifiedName(schema, t.table)} OVERRIDING SYSTEM VALUE SELECT * FROM ${legacy} WHERE ${quoteIdent(t.time)} >= $1`,
    [new Date(at.getTime() - days * DAY_MS).toISOString()],
  );
  if (t.table === DEAD_LETTERS_TABLE) {
    // New ids continue after the copied ones.
    await client.query(`SELECT setval(pg_get_serial_sequence($1, 'id'), greatest((SELECT max("id") FROM ${legacy}), 1))`, [
      qualifiedName(schema, t.table),
    ]);
  }
  await client.query(`DROP TABLE ${legacy}`);
}

export interface BookkeepingRetention {
  batchesRetentionDays: number;
  deadLettersRetentionDays: number;
}

export function retentionDays(t: BookkeepingTable, r: BookkeepingRetention): number {
  return t.table === BATCHES_TABLE ? r.batchesRetentionDays : r.deadLettersRetentionDays;
}

/** One maintenance pass: day partitions ahead, and retention. */
export async function maintainBookkeeping(
  client: pg.ClientBase,
  schema: string,
  r: BookkeepingRetention,
  at = new Date(),
): Promise<{ created: string[]; dropped: string[] }> {
  return locked(client, async () => {
    const created: string[] = [];
    const dropped: string[] = [];
    for (const t of BOOKKEEPING_TABLES) {
      created.push(...(await ensureDayPartitions(client, schema, t, at)));
      dropped.push(...(await dropDayPartitionsOlderThan(client, schema, t, retentionDays(t, r), at)));
    }
    return { created, dropped };
  });
}

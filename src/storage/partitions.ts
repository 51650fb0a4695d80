/**
 * Monthly range partitions of the event tables: created ahead (this month and the next), listed, and
 * dropped past retention. Used by the daemon on a schedule and by `ingestd partitions` by hand. Every
 * change runs under the schema advisory lock, so two workers or two daemons never create one twice.
 */
import type pg from "pg";
import type { StreamDefinition } from "../shared/stream-definition";
import { dedupTable, qualifiedName, quoteIdent } from "../shared/sql-identifiers";

/**
 * Key of the advisory lock serialising schema and partition changes across daemons (arbitrary, fixed).
 * Defined here, not in schema.ts, because schema.ts imports this module.
 */
export const SCHEMA_LOCK_KEY = 0x1e57d;

export interface Month {
  year: number;
  /** 1..12 */
  month: number;
}

export function monthOf(date: Date): Month {
  return { year: date.getUTCFullYear(), month: date.getUTCMonth() + 1 };
}

export function addMonths(m: Month, n: number): Month {
  const index = m.year * 12 + (m.month - 1) + n;
  return { year: Math.floor(index / 12), month: (index % 12) + 1 };
}

export function parseMonth(text: string): Month {
  const match = /^(\d{4})-(\d{2})$/.exec(text);
  const month = match ? Number(match[2]) : 0;
  if (!match || month < 1 || month > 12) throw new Error(`expected a month as YYYY-MM, got ${JSON.stringify(text)}`);
  return { year: Number(match[1]), month };
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

export function monthLabel(m: Month): string {
  return `${m.year}-${pad(m.month)}`;
}

/** Month boundaries are UTC midnights, written with an explicit offset so the server's TimeZone is irrelevant. */
function monthStart(m: Month): string {
  return `${m.year}-${pad(m.month)}-01 00:00:00+00`;
}

export function partitionName(table: string, m: Month): string {
  return `${table}_p${m.year}_${pad(m.month)}`;
}

const PARTITION_NAME = /_p(\d{4})_(\d{2})$/;

export interface PartitionInfo {
  stream: string;
  partition: string;
  /** null for the default partition. */
  month: string | null;
  rows: number;
}

async function locked<T>(client: pg.ClientBase, work: () => Promise<T>): Promise<T> {
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1)", [SCHEMA_LOCK_KEY]);
    const result = await work();
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

async function partitionsOf(client: pg.ClientBase, schema: string, table: string): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i
       JOIN pg_class c ON c.oid = i.inhrelid
       JOIN pg_class p ON p.oid = i.inhparent
       JOIN pg_namespace n ON n.oid = p.relnamespace
      WHERE n.nspname = $1 AND p.relname = $2
      ORDER BY c.relname`,
    [schema, table],
  );
  return rows.map((r) => r.name);
}

/**
 * Creates the month's partition of one table unless it exists. Rows that already landed in the default
 * partition for that month are moved into it, since PostgreSQL refuses a partition whose range the
 * default partition already holds rows for. Returns whether it created the partition.
 */
async function createPartition(client: pg.ClientBase, schema: string, stream: StreamDefinition, m: Month): Promise<boolean> {
  const name = partitionName(stream.table, m);
  const existing = await partitionsOf(client, schema, stream.table);
  if (existing.includes(name)) return false;
  const parent = qualifiedName(schema, stream.table);
  const partition = qualifiedName(schema, name);
  const defaultPartition = qualifiedName(schema, `${stream.table}_default`);
  const time = quoteIdent(stream.timeColumn!);
  const from = monthStart(m);
  const to = monthStart(addMonths(m, 1));
  await client.query(`CREATE TABLE ${partition} (LIKE ${parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`);
  await client.query(
    `WITH moved AS (DELETE FROM ${defaultPartition} WHERE ${time} >= '${from}' AND ${time} < '${to}' RETURNING *)
     INSERT INTO ${partition} SELECT * FROM moved`,
  );
  await client.query(`ALTER TABLE ${parent} ATTACH PARTITION ${partition} FOR VALUES FROM ('${from}') TO ('${to}')`);
  return true;
}

/** Ensures the partitions of `at`'s month and the next one exist for every partitioned stream. */
export async function ensureMonthPartitions(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  at = new Date(),
): Promise<string[]> {
  const month = monthOf(at);
  return createPartitions(client, schema, streams, [month, addMonths(month, 1)]);
}

export async function createPartitions(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  months: readonly Month[],
): Promise<string[]> {
  const partitioned = streams.filter((s) => s.partitioned);
  return locked(client, async () => {
    const created: string[] = [];
    for (const stream of partitioned) {
      for (const m of months) if (await createPartition(client, schema, stream, m)) created.push(partitionName(stream.table, m));
    }
    return created;
  });
}

/**
 * Drops monthly partitions that end before the start of the month `months` before `at`'s month. The
 * current month's partition is never dropped; the dedup ids of dropped events go with them.
 */
export async function dropPartitionsOlderThan(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  months: number,
  at = new Date(),
): Promise<string[]> {
  if (!Number.isInteger(months) || months < 1) throw new Error(`retention must be a whole number of months >= 1, got ${months}`);
  const cutoff = addMonths(monthOf(at), -months);
  const cutoffIndex = cutoff.year * 12 + cutoff.month;
  return locked(client, async () => {
    const dropped: string[] = [];
    for (const stream of streams.filter((s) => s.partitioned)) {
      for (const name of await partitionsOf(client, schema, stream.table)) {
        const match = PARTITION_NAME.exec(name);
        if (!match) continue;
        if (Number(match[1]) * 12 + Number(match[2]) >= cutoffIndex) continue;
        await client.query(`DROP TABLE ${qualifiedName(schema, name)}`);
        dropped.push(name);
      }
      if (stream.dedupKey && stream.timeColumn) {
        // Forget the ids of the events dropped with their partitions, but not of old events still stored (in
        // the default partition): a producer's retry of one of those must stay a duplicate.
        const key = quoteIdent(stream.dedupKey);
        const time = quoteIdent(stream.timeColumn);
        const before = `'${monthStart(cutoff)}'`;
        await client.query(
          `DELETE FROM ${qualifiedName(schema, dedupTable(stream.table))} d WHERE d.${time} < ${before}
             AND NOT EXISTS (SELECT 1 FROM ${qualifiedName(schema, stream.table)} e WHERE e.${time} < ${before} AND e.${key} = d.${key})`,
        );
      }
    }
    return dropped;
  });
}

export async function listPartitions(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
): Promise<PartitionInfo[]> {
  const result: PartitionInfo[] = [];
  for (const stream of streams.filter((s) => s.partitioned)) {
    for (const name of await partitionsOf(client, schema, stream.table)) {
      const match = PARTITION_NAME.exec(name);
      const { rows } = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${qualifiedName(schema, name)}`);
      result.push({ stream: stream.name, partition: name, month: match ? `${match[1]}-${match[2]}` : null, rows: Number(rows[0].n) });
    }
  }
  return result;
}

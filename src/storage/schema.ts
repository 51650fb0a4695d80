/**
 * Database schema, created idempotently at start. Several daemons may start at once against one database,
 * so all DDL runs in one transaction under an advisory lock (partition maintenance takes the same lock).
 */
import type pg from "pg";
import { ensureMonthPartitions, SCHEMA_LOCK_KEY } from "./partitions";
import type { ColumnType, StreamDefinition } from "../shared/stream-definition";
import { BATCHES_TABLE, DEAD_LETTERS_TABLE, dedupTable, qualifiedName, quoteIdent } from "../shared/sql-identifiers";
import { dedupClaimFunctionDdl } from "../shared/dedup-sql";

const SQL_TYPES: Record<ColumnType, string> = {
  text: "text",
  jsonb: "jsonb",
  timestamptz: "timestamptz",
  bigint: "bigint",
  integer: "integer",
  numeric: "numeric",
  date: "date",
  uuid: "uuid",
};

function indexName(table: string, columns: readonly string[]): string {
  return quoteIdent(`${table}_${columns.join("_")}_idx`.slice(0, 63));
}

export function streamTableDdl(schema: string, stream: StreamDefinition, all: readonly StreamDefinition[]): string[] {
  const table = qualifiedName(schema, stream.table);
  const lines = stream.columns.map((c) => `${quoteIdent(c.name)} ${SQL_TYPES[c.type]}${c.nullable ? "" : " NOT NULL"}`);
  lines.push(`"ingested_at" timestamptz NOT NULL DEFAULT now()`);
  if (stream.primaryKey) lines.push(`PRIMARY KEY (${stream.primaryKey.map(quoteIdent).join(", ")})`);
  for (const fk of stream.foreignKeys ?? []) {
    const target = all.find((s) => s.name === fk.references.stream);
    if (!target) throw new Error(`stream ${stream.name}: foreign key to unknown stream ${fk.references.stream}`);
    lines.push(
      `FOREIGN KEY (${fk.columns.map(quoteIdent).join(", ")}) REFERENCES ${qualifiedName(schema, target.table)} (${fk.references.columns.map(quoteIdent).join(", ")})`,
    );
  }
  if (stream.partitioned && !stream.timeColumn) throw new Error(`stream ${stream.name}: partitioned needs a timeColumn`);
  const partitioning = stream.partitioned ? ` PARTITION BY RANGE (${quoteIdent(stream.timeColumn!)})` : "";
  const ddl = [`CREATE TABLE IF NOT EXISTS ${table} (\n  ${lines.join(",\n  ")}\n)${partitioning}`];
  if (stream.partitioned) {
    ddl.push(`CREATE TABLE IF NOT EXISTS ${qualifiedName(schema, `${stream.table}_default`)} PARTITION OF ${table} DEFAULT`);
  }
  // On a partitioned table an index on the parent is created on every partition, present and future.
  for (const index of stream.indexes) {
    ddl.push(`CREATE INDEX IF NOT EXISTS ${indexName(stream.table, index)} ON ${table} (${index.map(quoteIdent).join(", ")})`);
  }
  if (stream.dedupKey) {
    const key = stream.columns.find((c) => c.name === stream.dedupKey);
    if (!key) throw new Error(`stream ${stream.name}: dedupKey ${stream.dedupKey} is not a column`);
    // Nullable: an id whose event time PostgreSQL could not read is still recorded (see group-commit.ts).
    const time = stream.timeColumn ? `, ${quoteIdent(stream.timeColumn)} timestamptz` : "";
    ddl.push(
      `CREATE TABLE IF NOT EXISTS ${qualifiedName(schema, dedupTable(stream.table))} (${quoteIdent(key.name)} ${SQL_TYPES[key.type]} PRIMARY KEY${time})`,
    );
    // The function workers claim a batch's ids with (workers/commit/commit-targets.ts); replaced at every start so
    // an upgraded daemon brings its own version.
    ddl.push(dedupClaimFunctionDdl(schema, stream)!);
  }
  return ddl;
}

export function bookkeepingDdl(schema: string): string[] {
  const batches = qualifiedName(schema, BATCHES_TABLE);
  const dead = qualifiedName(schema, DEAD_LETTERS_TABLE);
  return [
    `CREATE TABLE IF NOT EXISTS ${batches} (
  "batch_id" text NOT NULL,
  "request_id" text NOT NULL,
  "stream" text NOT NULL,
  "status" text NOT NULL,
  "received" integer NOT NULL,
  "accepted" integer NOT NULL,
  "rejected" integer NOT NULL,
  "duplicates" integer NOT NULL,
  "created_at" timestamptz NOT NULL,
  "committed_at" timestamptz NOT NULL
)`,
    `CREATE INDEX IF NOT EXISTS "ingest_batches_batch_id_idx" ON ${batches} ("batch_id", "committed_at")`,
    `CREATE INDEX IF NOT EXISTS "ingest_batches_request_id_idx" ON ${batches} ("request_id")`,
    `CREATE TABLE IF NOT EXISTS ${dead} (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "stream" text NOT NULL,
  "source" text NOT NULL,
  "batch_id" text,
  "record_index" integer,
  "line" integer,
  "raw" text NOT NULL,
  "errors" jsonb NOT NULL,
  "received_at" timestamptz NOT NULL
)`,
    `CREATE INDEX IF NOT EXISTS "ingest_dead_letters_stream_received_at_idx" ON ${dead} ("stream", "received_at")`,
  ];
}

/** Creates everything the daemon writes to, plus this month's and next month's partitions. */
export async function ensureSchema(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  at = new Date(),
): Promise<void> {
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1)", [SCHEMA_LOCK_KEY]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
    for (const stream of streams) {
      for (const statement of streamTableDdl(schema, stream, streams)) await client.query(statement);
    }
    for (const statement of bookkeepingDdl(schema)) await client.query(statement);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
  await ensureMonthPartitions(client, schema, streams, at);
}

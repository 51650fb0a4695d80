/**
 * Database schema, created idempotently at start. Several daemons may start at once against one database,
 * so all DDL runs in one transaction under an advisory lock (partition maintenance takes the same lock).
 */
import type pg from "pg";
import { ensureMonthPartitions, SCHEMA_LOCK_KEY } from "./partitions";
import type { ColumnType, StreamDefinition } from "../shared/stream-definition";
import { BATCHES_TABLE, DEAD_LETTERS_TABLE, PRODUCERS_TABLE, qualifiedName, quoteIdent, SOURCES_TABLE } from "../shared/sql-identifiers";
import {
  DEDUP_CLAIM_ARGUMENTS,
  DEDUP_CLAIM_RESULT,
  DEDUP_ENTER_ARGUMENTS,
  DEDUP_ENTER_RESULT,
  DEDUP_PROBE_ARGUMENTS,
  DEDUP_PROBE_RESULT,
  dedupClaimFunction,
  dedupClaimFunctionDdl,
  dedupEnterFunction,
  dedupEnterFunctionDdl,
  dedupProbeFunction,
  dedupProbeFunctionDdl,
} from "../shared/dedup-sql";
import { dedupStateDdl, ensureDedupGenerations, migrateLegacyIdState, renameLegacyIdState } from "./dedup-partitions";
import {
  BOOKKEEPING_TABLES,
  ensureDayPartitions,
  migrateLegacyRows,
  renameLegacyTable,
  retentionDays,
  type BookkeepingRetention,
} from "./bookkeeping-partitions";

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
  if (stream.onConflict === "update" && (!stream.primaryKey?.length || stream.dedupKey)) {
    throw new Error(`stream ${stream.name}: onConflict "update" needs a primaryKey and no dedupKey`);
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
  if (stream.dedupKey && !stream.columns.some((c) => c.name === stream.dedupKey)) {
    throw new Error(`stream ${stream.name}: dedupKey ${stream.dedupKey} is not a column`);
  }
  return ddl;
}

export function bookkeepingDdl(schema: string): string[] {
  const batches = qualifiedName(schema, BATCHES_TABLE);
  const dead = qualifiedName(schema, DEAD_LETTERS_TABLE);
  const producers = qualifiedName(schema, PRODUCERS_TABLE);
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
  "committed_at" timestamptz NOT NULL,
  "message" text,
  "daemon" text
) PARTITION BY RANGE ("committed_at")`,
    // Tables created before batch status was shared between daemons (docs/storage.md#batch-status-across-daemons).
    `ALTER TABLE ${batches} ADD COLUMN IF NOT EXISTS "message" text`,
    `ALTER TABLE ${batches} ADD COLUMN IF NOT EXISTS "daemon" text`,
    `CREATE TABLE IF NOT EXISTS ${qualifiedName(schema, `${BATCHES_TABLE}_default`)} PARTITION OF ${batches} DEFAULT`,
    `CREATE INDEX IF NOT EXISTS "ingest_batches_batch_id_idx" ON ${batches} ("batch_id", "committed_at")`,
    `CREATE INDEX IF NOT EXISTS "ingest_batches_request_id_idx" ON ${batches} ("request_id")`,
    `CREATE TABLE IF NOT EXISTS ${dead} (
  "id" bigint GENERATED ALWAYS AS IDENTITY,
  "stream" text NOT NULL,
  "source" text NOT NULL,
  "batch_id" text,
  "record_index" integer,
  "line" integer,
  "raw" text NOT NULL,
  "errors" jsonb NOT NULL,
  "received_at" timestamptz NOT NULL,
  PRIMARY KEY ("id", "received_at")
) PARTITION BY RANGE ("received_at")`,
    `CREATE TABLE IF NOT EXISTS ${qualifiedName(schema, `${DEAD_LETTERS_TABLE}_default`)} PARTITION OF ${dead} DEFAULT`,
    `CREATE INDEX IF NOT EXISTS "ingest_dead_letters_stream_received_at_idx" ON ${dead} ("stream", "received_at")`,
    // Set when the dead letter was replayed (docs/http-api.md#dead-letters); added to tables made before it
    // (a nullable column without a default: no rewrite).
    `ALTER TABLE ${dead} ADD COLUMN IF NOT EXISTS "replayed_at" timestamptz`,
    // Producer sessions (docs/websocket-protocol.md#producer-sessions): one row per producer, not per event.
    `CREATE TABLE IF NOT EXISTS ${producers} (
  "stream" text NOT NULL,
  "producer" text NOT NULL,
  "epoch" bigint NOT NULL,
  "committed_seq" bigint NOT NULL DEFAULT 0,
  "updated_at" timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY ("stream", "producer")
)`,
    `CREATE INDEX IF NOT EXISTS "ingest_producers_updated_at_idx" ON ${producers} ("updated_at")`,
    // Pull sources (docs/sources.md#state): one row per source, shared by every daemon on the database.
    `CREATE TABLE IF NOT EXISTS ${qualifiedName(schema, SOURCES_TABLE)} (
  "name" text PRIMARY KEY,
  "watermark" text,
  "next_run_at" timestamptz NOT NULL DEFAULT now(),
  "last_run_at" timestamptz,
  "last_success_at" timestamptz,
  "last_error" text,
  "consecutive_failures" integer NOT NULL DEFAULT 0,
  "runs" bigint NOT NULL DEFAULT 0,
  "last_records" jsonb,
  "running_since" timestamptz,
  "running_on" text
)`,
  ];
}

/** Defaults of the retention settings (src/ops/config.ts), for callers without a configuration. */
export const DEFAULT_DEDUP_WINDOW_HOURS = 168;
export const DEFAULT_RETENTION: SchemaRetention = {
  dedupWindowHours: DEFAULT_DEDUP_WINDOW_HOURS,
  batchesRetentionDays: 7,
  deadLettersRetentionDays: 30,
};

export interface SchemaRetention extends BookkeepingRetention {
  dedupWindowHours: number;
}

/**
 * Creates everything the daemon writes to, plus this month's and next month's partitions and the id state's
 * partitions of the window's current slots. An id table of the shape before the window is migrated.
 */
export async function ensureSchema(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  at = new Date(),
  retention: SchemaRetention = DEFAULT_RETENTION,
): Promise<void> {
  // Its DDL takes locks beside other daemons' group commits: a deadlock victim is rolled back whole and
  // retried (PostgreSQL's log names the deadlock).
  for (let attempt = 1; ; attempt++) {
    try {
      await schemaTransaction(client, schema, streams, at, retention);
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== DEADLOCK_DETECTED || attempt === SCHEMA_ATTEMPTS) throw err;
    }
  }
  await ensureMonthPartitions(client, schema, streams, at);
}

/** SQLSTATE deadlock_detected, and the attempts at the schema setup it may cost. */
const DEADLOCK_DETECTED = "40P01";
const SCHEMA_ATTEMPTS = 3;

/** ensureSchema's one transaction, under the schema lock. */
async function schemaTransaction(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  at: Date,
  retention: SchemaRetention,
): Promise<void> {
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1)", [SCHEMA_LOCK_KEY]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
    for (const stream of streams) {
      for (const statement of streamTableDdl(schema, stream, streams)) await client.query(statement);
      if (!stream.dedupKey) continue;
      const legacy = await renameLegacyIdState(client, schema, stream);
      for (const statement of dedupStateDdl(schema, stream)) await client.query(statement);
      await ensureDedupGenerations(client, schema, stream, at);
      if (legacy !== null) await migrateLegacyIdState(client, schema, stream, legacy, at);
      // The functions workers claim a batch's ids with (workers/commit/id-claim.ts); replaced at every start so
      // an upgraded daemon brings its own version (one with other parameters or another result is dropped first).
      const functions = [
        {
          name: dedupClaimFunction(stream.table),
          args: DEDUP_CLAIM_ARGUMENTS,
          result: DEDUP_CLAIM_RESULT,
          ddl: dedupClaimFunctionDdl(schema, stream)!,
        },
        {
          name: dedupProbeFunction(stream.table),
          args: DEDUP_PROBE_ARGUMENTS,
          result: DEDUP_PROBE_RESULT,
          ddl: dedupProbeFunctionDdl(schema, stream)!,
        },
        // After the probe function, which it calls.
        {
          name: dedupEnterFunction(stream.table),
          args: DEDUP_ENTER_ARGUMENTS,
          result: DEDUP_ENTER_RESULT,
          ddl: dedupEnterFunctionDdl(schema, stream)!,
        },
      ];
      for (const f of functions) {
        const { rows: others } = await client.query<{ fn: string }>(
          `SELECT p.oid::regprocedure::text AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = $1 AND p.proname = $2
              AND (pg_get_function_identity_arguments(p.oid) <> $3 OR pg_get_function_result(p.oid) <> $4)`,
          [schema, f.name, f.args, f.result],
        );
        for (const { fn } of others) await client.query(`DROP FUNCTION ${fn}`);
        await client.query(f.ddl);
      }
    }
    const legacy = [];
    for (const t of BOOKKEEPING_TABLES) if (await renameLegacyTable(client, schema, t)) legacy.push(t);
    for (const statement of bookkeepingDdl(schema)) await client.query(statement);
    for (const t of BOOKKEEPING_TABLES) await ensureDayPartitions(client, schema, t, at);
    for (const t of legacy) await migrateLegacyRows(client, schema, t, retentionDays(t, retention), at);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

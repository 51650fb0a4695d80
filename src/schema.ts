/**
 * Database schema, created idempotently at start. Several daemons may start at once against one database,
 * so all DDL runs in one transaction under an advisory lock.
 */
import type pg from "pg";
import type { ColumnType, StreamDefinition } from "./stream-definition";
import { qualifiedName, quoteIdent } from "./sql-identifiers";

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

/** Key of the advisory lock serialising schema changes across daemons (arbitrary, fixed). */
const SCHEMA_LOCK_KEY = 0x1e57d;

export function streamTableDdl(schema: string, stream: StreamDefinition): string[] {
  const table = qualifiedName(schema, stream.table);
  const columns = stream.columns.map(
    (c) => `${quoteIdent(c.name)} ${SQL_TYPES[c.type]}${c.nullable ? "" : " NOT NULL"}`,
  );
  columns.push(`"ingested_at" timestamptz NOT NULL DEFAULT now()`);
  const ddl = [`CREATE TABLE IF NOT EXISTS ${table} (\n  ${columns.join(",\n  ")}\n)`];
  for (const index of stream.indexes) {
    const name = quoteIdent(`${stream.table}_${index.join("_")}_idx`.slice(0, 63));
    ddl.push(`CREATE INDEX IF NOT EXISTS ${name} ON ${table} (${index.map(quoteIdent).join(", ")})`);
  }
  return ddl;
}

export async function ensureSchema(client: pg.ClientBase, schema: string, streams: readonly StreamDefinition[]): Promise<void> {
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1)", [SCHEMA_LOCK_KEY]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
    for (const stream of streams) {
      for (const statement of streamTableDdl(schema, stream)) await client.query(statement);
    }
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  }
}

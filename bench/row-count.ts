/**
 * Rows of the bench stream's table, counted whole. The table is never emptied during a run (the daemon
 * meets a table and an id state that grow, as in production), so each phase is verified by the rows it
 * added: the count after minus the count before equals the events it had acknowledged as accepted.
 */
import { qualifiedName } from "../src/shared/sql-identifiers";
import type { BenchDb } from "./bench-db";
import { benchStream } from "./event-table";

export async function countRows(db: BenchDb, schema: string): Promise<number> {
  const r = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${qualifiedName(schema, benchStream().table)}`);
  return Number(r.rows[0].n);
}

/** CHECKPOINT between stages that are not timed (needs superuser or pg_checkpoint on a real server). */
export async function checkpoint(db: BenchDb): Promise<void> {
  await db.query("CHECKPOINT").catch(() => undefined);
}

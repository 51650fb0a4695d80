/**
 * Exact PostgreSQL counters around a phase, for explaining its throughput: write transactions (the next
 * transaction id; every group-commit batch takes one) and WAL bytes (the insert LSN). Unlike pg_stat_*
 * views these do not lag behind the backends' periodic stats flushes.
 */
import type { BenchDb } from "./bench-db";

export interface DbMark {
  xid: bigint;
  lsn: bigint;
}

export interface DbDelta {
  /** Write transactions committed or aborted in between (by anyone: the bench adds a handful). */
  transactions: number;
  wal_bytes: number;
}

function parseLsn(lsn: string): bigint {
  const [hi, lo] = lsn.split("/");
  return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
}

export async function markDb(db: BenchDb): Promise<DbMark | null> {
  try {
    // pg_snapshot_xmax of a fresh snapshot is the next xid to assign; reading it assigns none.
    const r = await db.query<{ xmax: string; lsn: string }>(
      "SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax, pg_current_wal_lsn()::text AS lsn",
    );
    return { xid: BigInt(r.rows[0].xmax), lsn: parseLsn(r.rows[0].lsn) };
  } catch {
    return null; // a standby or an old server: no counters then
  }
}

export function dbDelta(before: DbMark | null, after: DbMark | null): DbDelta | null {
  if (before === null || after === null) return null;
  return { transactions: Number(after.xid - before.xid), wal_bytes: Number(after.lsn - before.lsn) };
}

/**
 * Exact PostgreSQL counters around a phase, for explaining its throughput: write transactions (the next
 * transaction id; every group-commit batch takes one) and WAL bytes (the insert LSN). Unlike pg_stat_*
 * views these do not lag behind the backends' periodic stats flushes. Beside them, where the server has the
 * view (PostgreSQL 17 on), the checkpoints started, which the checkpointer reports as it goes. Not the WAL's
 * full-page images: an autovacuum worker reports its pass's only when the pass ends, so they would land in the
 * wrong minute of a soak (docs/performance.md#the-soaks-dear-minutes).
 */
import type { BenchDb } from "./bench-db";

export interface DbMark {
  xid: bigint;
  lsn: bigint;
  /** null: the server has no pg_stat_checkpointer (before 17) or would not say. */
  checkpoints: bigint | null;
}

export interface DbDelta {
  /** Write transactions committed or aborted in between (by anyone: the bench adds a handful). */
  transactions: number;
  wal_bytes: number;
  /** Checkpoints started (timed or requested) in between; null where not known. */
  checkpoints: number | null;
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
    const mark: DbMark = { xid: BigInt(r.rows[0].xmax), lsn: parseLsn(r.rows[0].lsn), checkpoints: null };
    try {
      const w = await db.query<{ ckpt: string }>("SELECT (num_timed + num_requested)::text AS ckpt FROM pg_stat_checkpointer");
      mark.checkpoints = BigInt(w.rows[0].ckpt);
    } catch {
      // before PostgreSQL 17: the transaction and WAL counters alone
    }
    return mark;
  } catch {
    return null; // a standby or an old server: no counters then
  }
}

export function dbDelta(before: DbMark | null, after: DbMark | null): DbDelta | null {
  if (before === null || after === null) return null;
  const since = (a: bigint | null, b: bigint | null) => (a === null || b === null ? null : Number(a - b));
  return {
    transactions: Number(after.xid - before.xid),
    wal_bytes: Number(after.lsn - before.lsn),
    checkpoints: since(after.checkpoints, before.checkpoints),
  };
}

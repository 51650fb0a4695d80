/**
 * How long a vacuum of the events table ran: `pg_stat_progress_vacuum` asked once a second for the table and its
 * partitions. Autovacuum's passes over the month's partition as it grows write every page they mark all-visible
 * to the WAL again (data checksums) and bring checkpoints forward, so a phase or a soak minute with one costs
 * PostgreSQL more per event (docs/performance.md#the-soaks-dear-minutes).
 */
import type { BenchDb } from "./bench-db";

const POLL_MS = 1000;

export interface VacuumPoll {
  /** Seconds with a vacuum running since the poll started; null until a poll has answered. */
  seconds(): number | null;
  stop(): void;
}

/** `table`: schema-qualified. A role without pg_read_all_stats sees no other session's progress: it reads 0. */
export function pollVacuum(db: BenchDb, table: string): VacuumPoll {
  let seconds: number | null = null;
  const timer = setInterval(() => {
    void db
      .query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_progress_vacuum
          WHERE relid = $1::regclass OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)`,
        [table],
      )
      .then(
        (r) => {
          seconds = (seconds ?? 0) + (r.rows[0].n > 0 ? POLL_MS / 1000 : 0);
        },
        () => undefined,
      );
  }, POLL_MS);
  timer.unref();
  return {
    seconds: () => seconds,
    stop() {
      clearInterval(timer);
    },
  };
}

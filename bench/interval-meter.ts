/**
 * CPU and WAL of each interval of a phase reported by intervals (the soak's minutes), sampled on the bench's
 * clock from the "go" message: the generators' intervals are counted by ack time from their first send, a few
 * milliseconds later, so the two line up to within that. What a soak's slow minute cost, and whose it was:
 * the daemon's, PostgreSQL's, or the WAL of a checkpoint's full-page images (docs/performance.md#measured);
 * and the id-state filters the daemon held at its end, as its /metrics says (past `dedupFilterMb` they are
 * folded, and their false positives cost PostgreSQL probes: docs/storage.md#filter-memory). And the seconds
 * in which a vacuum of the events table ran: with data checksums its passes over the month's partition write
 * every page they mark all-visible to the WAL again as a full-page image, gigabytes that bring the next
 * checkpoints forward (docs/performance.md#the-soaks-dear-minutes).
 */
import type { BenchDb } from "./bench-db";
import { scrapeMetrics } from "./daemon-metrics";
import { dbDelta, markDb, type DbDelta } from "./db-counters";
import { CpuMeter, type CpuShare } from "./proc-stats";
import type { VacuumPoll } from "./vacuum-poll";

export interface IntervalSample {
  cpu: CpuShare;
  db: DbDelta | null;
  /**
   * The daemon's id-state filters at the interval's end: bytes, how many a worker checks each id against, how
   * many of them are folded; null where not scraped (or no deduplication).
   */
  filters: { bytes: number; count: number; folded: number } | null;
  /** Seconds of the interval in which a vacuum (auto or not) of the table ran (bench/vacuum-poll.ts); null: not known. */
  vacuumS: number | null;
}

export interface IntervalMeter {
  /** Stops sampling; the samples of the intervals completed so far, in order. */
  stop(): IntervalSample[];
}

/** `vacuum`: the phase's poll of the events table's vacuums (its owner stops it); each interval takes its share. */
export function meterIntervals(
  db: BenchDb,
  daemonPid: number | null,
  port: number,
  cores: number,
  intervalS: number,
  vacuum: VacuumPoll,
): IntervalMeter {
  const samples: IntervalSample[] = [];
  let meter = new CpuMeter(daemonPid, db.postmasterPid());
  let mark = markDb(db);
  let stopped = false;
  let vacuumBefore = vacuum.seconds();
  const timer = setInterval(() => {
    const cpu = meter.read(cores);
    meter = new CpuMeter(daemonPid, db.postmasterPid());
    const before = mark;
    mark = markDb(db);
    const at = samples.length;
    const vacuumNow = vacuum.seconds();
    samples.push({ cpu, db: null, filters: null, vacuumS: vacuumNow === null ? null : vacuumNow - (vacuumBefore ?? 0) });
    vacuumBefore = vacuumNow;
    // The WAL position comes back asynchronously; a sample whose query has not answered by stop() keeps null.
    void Promise.all([before, mark]).then(([b, a]) => {
      if (!stopped) samples[at].db = dbDelta(b, a);
    });
    void scrapeMetrics(port).then((m) => {
      const bytes = m?.get("ingestd_dedup_filter_bytes");
      const count = m?.get("ingestd_dedup_filters");
      const folded = m?.get("ingestd_dedup_filters_folded");
      if (!stopped && bytes !== undefined && count !== undefined && folded !== undefined) samples[at].filters = { bytes, count, folded };
    });
  }, intervalS * 1000);
  timer.unref();
  return {
    stop() {
      stopped = true;
      clearInterval(timer);
      return samples;
    },
  };
}

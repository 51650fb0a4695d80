/**
 * CPU and WAL of each interval of a phase reported by intervals (the soak's minutes), sampled on the bench's
 * clock from the "go" message: the generators' intervals are counted by ack time from their first send, a few
 * milliseconds later, so the two line up to within that. What a soak's slow minute cost, and whose it was:
 * the daemon's, PostgreSQL's, or the WAL of a checkpoint's full-page images (docs/performance.md#measured);
 * and the id-state filters the daemon held at its end, as its /metrics says (past `dedupFilterMb` they are
 * folded, and their false positives cost PostgreSQL probes: docs/storage.md#filter-memory).
 */
import type { BenchDb } from "./bench-db";
import { scrapeMetrics } from "./daemon-metrics";
import { dbDelta, markDb, type DbDelta } from "./db-counters";
import { CpuMeter, type CpuShare } from "./proc-stats";

export interface IntervalSample {
  cpu: CpuShare;
  db: DbDelta | null;
  /**
   * The daemon's id-state filters at the interval's end: bytes, how many a worker checks each id against, how
   * many of them are folded; null where not scraped (or no deduplication).
   */
  filters: { bytes: number; count: number; folded: number } | null;
}

export interface IntervalMeter {
  /** Stops sampling; the samples of the intervals completed so far, in order. */
  stop(): IntervalSample[];
}

export function meterIntervals(db: BenchDb, daemonPid: number | null, port: number, cores: number, intervalS: number): IntervalMeter {
  const samples: IntervalSample[] = [];
  let meter = new CpuMeter(daemonPid, db.postmasterPid());
  let mark = markDb(db);
  let stopped = false;
  const timer = setInterval(() => {
    const cpu = meter.read(cores);
    meter = new CpuMeter(daemonPid, db.postmasterPid());
    const before = mark;
    mark = markDb(db);
    const at = samples.length;
    samples.push({ cpu, db: null, filters: null });
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

/**
 * Counters behind `GET /stats` (docs/http-api.md#operations-endpoints). Fed from AckTelemetry, the same place and the same
 * outcomes as the `ingestd_events_total` metric, so the two never disagree.
 *
 *   total_messages_processed  records handled successfully: accepted (committed) plus duplicates
 *   messages_by_entity        the same, per entity: a line stream's entity (`Order`, `OrderLineItem`, …, whichever
 *                             endpoint took the line), else the stream's name (`events`); from the workers' counts
 *   errors                    records rejected as invalid, plus requests / frames that failed as a whole
 *                             (unparseable body, database unavailable, worker failure), each counted once
 *   requests_per_second       HTTP ingest requests and WebSocket frames acknowledged per second, averaged
 *                             over the last RATE_WINDOW_S complete seconds
 */
import type { IngestOutcome } from "../shared/task-protocol";

/** Seconds averaged for the rates: short enough to follow load changes, long enough not to flicker. */
export const RATE_WINDOW_S = 10;

export interface StatsReport {
  total_messages_processed: number;
  messages_by_entity: Record<string, number>;
  errors: number;
  errors_by_kind: { rejected: number; unparseable: number; too_large: number; db_unavailable: number; failed: number };
  uptime_seconds: number;
  requests_per_second: number;
  events_per_second: number;
  rate_window_seconds: number;
}

/** Per-second buckets over the last RATE_WINDOW_S + 1 seconds (the current one still filling). */
class RateWindow {
  private readonly seconds = new Float64Array(RATE_WINDOW_S + 1);
  private readonly counts = new Float64Array(RATE_WINDOW_S + 1);

  add(nowMs: number, n: number): void {
    const sec = Math.floor(nowMs / 1000);
    const slot = sec % this.counts.length;
    if (this.seconds[slot] !== sec) {
      this.seconds[slot] = sec;
      this.counts[slot] = 0;
    }
    this.counts[slot] += n;
  }

  /** Mean per second over the complete seconds of the window that the process has been up for. */
  rate(nowMs: number, startedAtMs: number): number {
    const current = Math.floor(nowMs / 1000);
    const span = Math.min(RATE_WINDOW_S, current - Math.floor(startedAtMs / 1000));
    if (span <= 0) return 0;
    let sum = 0;
    for (let i = 0; i < this.counts.length; i++) {
      const sec = this.seconds[i];
      if (sec < current && sec >= current - span) sum += this.counts[i];
    }
    return sum / span;
  }
}

export class Stats {
  private processed = 0;
  private readonly byEntity = new Map<string, number>();
  private readonly errors = { rejected: 0, unparseable: 0, too_large: 0, db_unavailable: 0, failed: 0, superseded: 0 };
  private readonly requests = new RateWindow();
  private readonly events = new RateWindow();

  constructor(private readonly startedAt = Date.now()) {}

  /** One request or frame acknowledged; `outcome` is null when it settled without a worker outcome. */
  observe(outcome: IngestOutcome | null, nowMs = Date.now()): void {
    this.requests.add(nowMs, 1);
    if (outcome === null) return;
    if (outcome.kind !== "done") {
      this.errors[outcome.kind]++;
      return;
    }
    const ok = outcome.accepted + outcome.duplicates;
    this.processed += ok;
    for (const { entity, processed } of outcome.byEntity) this.byEntity.set(entity, (this.byEntity.get(entity) ?? 0) + processed);
    this.errors.rejected += outcome.rejected;
    this.events.add(nowMs, ok + outcome.rejected);
  }

  report(nowMs = Date.now()): StatsReport {
    const e = this.errors;
    const round = (n: number) => Math.round(n * 10) / 10;
    return {
      total_messages_processed: this.processed,
      messages_by_entity: Object.fromEntries(this.byEntity),
      errors: e.rejected + e.unparseable + e.too_large + e.db_unavailable + e.failed,
      errors_by_kind: { ...e },
      uptime_seconds: Math.round((nowMs - this.startedAt) / 1000),
      requests_per_second: round(this.requests.rate(nowMs, this.startedAt)),
      events_per_second: round(this.events.rate(nowMs, this.startedAt)),
      rate_window_seconds: RATE_WINDOW_S,
    };
  }
}

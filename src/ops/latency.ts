/**
 * HDR latency histograms per stage and stream, over the last interval and since start, plus the optional
 * HdrHistogram interval log (HLOG_PATH) that standard HdrHistogram tools read.
 *
 * Values are recorded in microseconds. Stages:
 *   receive  – request/frame arrival → last byte in the ring
 *   validate – in the ring → parsed, validated, encoded by a worker
 *   commit   – validated → committed by PostgreSQL (group commit wait included)
 *   ack      – arrival → response / ack written (what a producer sees)
 */
import fs from "node:fs";
import * as hdr from "hdr-histogram-js";

export const STAGES = ["receive", "validate", "commit", "ack"] as const;
export type Stage = (typeof STAGES)[number];

/** Longest latency tracked exactly: one hour in µs; larger values are clamped. */
const HIGHEST_US = 3_600_000_000;

function newHistogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3 });
}

interface Series {
  interval: hdr.Histogram;
  lastInterval: hdr.Histogram;
  total: hdr.Histogram;
}

export interface Percentiles {
  count: number;
  p50_ms: number;
  p90_ms: number;
  p95_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
}

export interface LatencyReport {
  interval_ms: number;
  interval_start: string;
  interval_end: string;
  since: string;
  last_interval: Record<string, Record<string, Percentiles>>;
  since_start: Record<string, Record<string, Percentiles>>;
}

function percentiles(h: hdr.Histogram): Percentiles {
  const ms = (us: number) => Math.round(us) / 1000;
  // getValueAtPercentile answers the top of the value's HDR bucket, which can exceed the exact recorded
  // max (p99 214.015 ms over max 213.916 ms): clamp so a report never shows a percentile above its max.
  const at = (p: number) => ms(Math.min(h.getValueAtPercentile(p), h.maxValue));
  return {
    count: h.totalCount,
    p50_ms: at(50),
    p90_ms: at(90),
    p95_ms: at(95),
    p99_ms: at(99),
    p999_ms: at(99.9),
    max_ms: ms(h.maxValue),
  };
}

export class LatencyRecorder {
  private series = new Map<string, Series>();
  private readonly startedAt = Date.now();
  private intervalStart = Date.now();
  private lastIntervalStart = Date.now();
  private lastIntervalEnd = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private hlog: { fd: number; writer: hdr.HistogramLogWriter } | null = null;
  private hlogPath: string | null = null;

  constructor(private readonly intervalMs: number) {}

  /** Records one latency in milliseconds for a stage of a stream. */
  record(stage: Stage, stream: string, ms: number): void {
    const key = `${stage}.${stream}`;
    let s = this.series.get(key);
    if (!s) {
      s = { interval: newHistogram(), lastInterval: newHistogram(), total: newHistogram() };
      this.series.set(key, s);
    }
    const us = Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000)));
    s.interval.recordValue(us);
    s.total.recordValue(us);
  }

  start(hlogPath: string | null): void {
    this.hlogPath = hlogPath;
    this.openHlog();
    this.timer = setInterval(() => this.rotate(), this.intervalMs);
    this.timer.unref();
  }

  /**
   * SIGHUP: closes the interval log and opens HLOG_PATH again, so logrotate can move the file away. The new
   * file gets its own header with the same base time, so each file reads on its own.
   */
  reopenLog(): void {
    if (!this.hlog) return;
    fs.closeSync(this.hlog.fd);
    this.hlog = null;
    this.openHlog();
  }

  private openHlog(): void {
    if (!this.hlogPath) return;
    const fd = fs.openSync(this.hlogPath, "a");
    const writer = new hdr.HistogramLogWriter((chunk: string) => fs.writeSync(fd, chunk));
    writer.outputComment(`ingestd latency log, values in microseconds, tags are <stage>.<stream>`);
    writer.outputLogFormatVersion();
    writer.outputStartTime(this.startedAt);
    // Interval timestamps are relative to this base. Stating it (as Java's writer does) keeps a file that
    // several runs appended to readable: readers take each run's base from its own header.
    writer.outputComment(`[BaseTime: ${(this.startedAt / 1000).toFixed(3)} (seconds since epoch)]`);
    writer.baseTime = this.startedAt;
    writer.outputLegend();
    this.hlog = { fd, writer };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.rotate();
    if (this.hlog) fs.closeSync(this.hlog.fd);
    this.hlog = null;
  }

  /** Ends the current interval: it becomes `last_interval` and is appended to the interval log. */
  rotate(): void {
    const end = Date.now();
    for (const [key, s] of this.series) {
      const done = s.interval;
      done.startTimeStampMsec = this.intervalStart;
      done.endTimeStampMsec = end;
      done.tag = key;
      if (this.hlog && done.totalCount > 0) this.hlog.writer.outputIntervalHistogram(done);
      s.interval = s.lastInterval;
      s.interval.reset();
      s.lastInterval = done;
    }
    this.lastIntervalStart = this.intervalStart;
    this.lastIntervalEnd = end;
    this.intervalStart = end;
  }

  report(): LatencyReport {
    const last: Record<string, Record<string, Percentiles>> = {};
    const total: Record<string, Record<string, Percentiles>> = {};
    for (const [key, s] of this.series) {
      const dot = key.indexOf(".");
      const stage = key.slice(0, dot);
      const stream = key.slice(dot + 1);
      (last[stage] ??= {})[stream] = percentiles(s.lastInterval);
      (total[stage] ??= {})[stream] = percentiles(s.total);
    }
    return {
      interval_ms: this.intervalMs,
      interval_start: new Date(this.lastIntervalStart).toISOString(),
      interval_end: new Date(this.lastIntervalEnd).toISOString(),
      since: new Date(this.startedAt).toISOString(),
      last_interval: last,
      since_start: total,
    };
  }
}

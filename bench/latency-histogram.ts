/**
 * Ack-latency histograms: recorded in microseconds in each load generator, shipped to the orchestrator as
 * compressed base64 (the HdrHistogram wire format) and merged there, so percentiles are exact over all
 * generators rather than averages of per-process percentiles.
 */
import * as hdr from "hdr-histogram-js";

/** One minute in µs: anything slower is clamped (and is a failure anyway). */
const HIGHEST_US = 60_000_000;

export function newLatencyHistogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3 });
}

export function recordMs(h: hdr.Histogram, ms: number): void {
  h.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000))));
}

export function encodeHistogram(h: hdr.Histogram): string {
  return hdr.encodeIntoCompressedBase64(h);
}

export function mergeHistograms(encoded: readonly string[]): hdr.Histogram {
  const merged = newLatencyHistogram();
  for (const e of encoded) {
    const h = hdr.decodeFromCompressedBase64(e);
    merged.add(h);
    h.destroy();
  }
  return merged;
}

export interface LatencySummary {
  count: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
  mean_ms: number;
}

export function summarize(h: hdr.Histogram): LatencySummary {
  const ms = (us: number) => Math.round(us) / 1000;
  return {
    count: h.totalCount,
    p50_ms: ms(h.getValueAtPercentile(50)),
    p95_ms: ms(h.getValueAtPercentile(95)),
    p99_ms: ms(h.getValueAtPercentile(99)),
    p999_ms: ms(h.getValueAtPercentile(99.9)),
    max_ms: ms(h.maxValue),
    mean_ms: ms(h.mean),
  };
}

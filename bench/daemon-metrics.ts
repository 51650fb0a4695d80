/**
 * A few of the daemon's own Prometheus counters, scraped before and after a phase: how busy its worker
 * threads were and how long a batch's COPY + commit took. Missing metrics just leave gaps in the report.
 */

export type MetricSample = Map<string, number>;

/** `name{a="1",b="2"}` with labels sorted, so lookups do not depend on the exposition's label order. */
function canonical(series: string): string {
  const brace = series.indexOf("{");
  if (brace === -1) return series;
  const labels = series.slice(brace + 1, series.lastIndexOf("}")).match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? [];
  return `${series.slice(0, brace)}{${labels.sort().join(",")}}`;
}

/** `name{labels}` → value, for the plain sample lines of a text exposition. */
export async function scrapeMetrics(port: number): Promise<MetricSample | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    if (!res.ok) return null;
    const text = await res.text();
    const samples: MetricSample = new Map();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const space = line.lastIndexOf(" ");
      const value = Number(line.slice(space + 1));
      if (Number.isFinite(value)) samples.set(canonical(line.slice(0, space)), value);
    }
    return samples;
  } catch {
    return null;
  }
}

export interface DaemonCounters {
  /** Worker threads busy on average (event-loop utilisation summed over workers). */
  worker_busy_threads: number | null;
  /** Mean COPY + commit time of the batch holding a request / frame, ms (request-weighted). */
  commit_ms_mean: number | null;
  /** Events the daemon counted as accepted during the phase. */
  events_accepted: number | null;
}

export function counterDeltas(before: MetricSample | null, after: MetricSample | null, stream: string, wallS: number): DaemonCounters {
  const delta = (key: string) => {
    if (before === null || after === null) return null;
    const b = after.get(key);
    // A labelled series appears with its first observation: absent before means zero before.
    return b === undefined ? null : b - (before.get(key) ?? 0);
  };
  const busy = delta("ingestd_worker_busy_seconds_total");
  const sum = delta(`ingestd_copy_duration_seconds_sum{stream="${stream}"}`);
  const count = delta(`ingestd_copy_duration_seconds_count{stream="${stream}"}`);
  return {
    worker_busy_threads: busy === null || wallS <= 0 ? null : Math.round((busy / wallS) * 100) / 100,
    commit_ms_mean: sum === null || !count ? null : Math.round((sum / count) * 1e5) / 100,
    events_accepted: delta(canonical(`ingestd_events_total{stream="${stream}",outcome="accepted"}`)),
  };
}

/**
 * Prometheus metrics (prom-client). Names follow the conventions: `ingestd_` prefix, `_total` counters,
 * `_seconds` and `_bytes` units, `_ratio` for 0..1. Label values come from a fixed set (routes, streams,
 * outcomes), never from input, so cardinality stays bounded. Checked by `promtool check metrics`.
 */
import type { Worker } from "node:worker_threads";
import client from "prom-client";
import { VERSION } from "./version";

export interface MetricsSources {
  ringBytesInUse: () => number;
  ringCapacityBytes: number;
  /** The ring's reserve for work of priority above 0 (part of the capacity), and what of it is in use. */
  ringReserveBytesInUse: () => number;
  ringReserveBytes: number;
  /** Requests and frames waiting for ring space. */
  ringWaiting: () => number;
  /** Tasks in the workers' group commit: waiting in a batch not yet started, or in the running transaction. */
  commitTasks: (state: "waiting" | "committing") => number;
  /** Group-commit transactions committed by each path, summed over workers: a count that wraps at 2^32. */
  groupCommits: (path: "one_trip" | "long") => number;
  wsConnections: () => number;
  databaseUp: () => boolean;
  /** The pool's worker threads, whose event-loop utilisation is the pool's utilisation. */
  workerThreads: () => readonly Worker[];
  tasksInFlight: () => number;
  /** Of those, the ones waiting in the dispatcher for the workers' byte budget. */
  tasksWaiting: () => number;
  /** Body bytes handed to the workers and not yet settled (bounded by workerBacklogMb per worker). */
  workerBacklogBytes: () => number;
  /**
   * The id-state filters the workers check: how many, their bytes (one shared copy), how many were folded and
   * how many sealed generations were left without one to fit dedupFilterMb.
   */
  dedupFilters: () => { count: number; bytes: number; folded: number; generations: number; unfiltered: number };
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Worker busy time from each thread's event-loop utilisation. Piscina's own `utilization` is a since-start
 * mean of task run time, and our tasks mostly wait on group commit (many per worker at once), so it neither
 * stays within 0..1 nor follows the load. ELU counts only the time a worker's loop is actually busy.
 */
class WorkerBusy {
  private readonly lastActive = new WeakMap<Worker, number>();
  /** Busy seconds summed over all workers since start (monotonic). */
  busySeconds = 0;
  /** Mean utilisation of the pool over the last sample window. */
  ratio = 0;
  private lastSampleAt = performance.now();

  constructor(private readonly threads: () => readonly Worker[]) {}

  sample(): void {
    const at = performance.now();
    const elapsed = at - this.lastSampleAt;
    let busy = 0;
    let counted = 0;
    for (const w of this.threads()) {
      let active: number;
      try {
        active = w.performance.eventLoopUtilization().active;
      } catch {
        continue; // a worker being replaced
      }
      const prev = this.lastActive.get(w);
      this.lastActive.set(w, active);
      // A new worker's first sample only sets its baseline; an exited one reports 0 and is skipped.
      if (prev === undefined || active < prev) continue;
      busy += active - prev;
      counted++;
    }
    this.busySeconds += busy / 1000;
    this.ratio = counted > 0 && elapsed > 0 ? Math.min(1, busy / (elapsed * counted)) : 0;
    this.lastSampleAt = at;
  }
}

export class Metrics {
  readonly registry = new client.Registry();
  readonly httpRequests: client.Counter<"route" | "status">;
  readonly events: client.Counter<"stream" | "outcome">;
  readonly ingestRequests: client.Counter<"stream" | "transport" | "outcome">;
  readonly wsFrames: client.Counter<"stream">;
  readonly ackLatency: client.Histogram<"stream" | "transport">;
  readonly copyDuration: client.Histogram<"stream">;
  /** Pull sources (docs/sources.md#metrics). */
  readonly sourceRuns: client.Counter<"source" | "outcome">;
  readonly sourceRecords: client.Counter<"source" | "outcome">;
  readonly sourceRequests: client.Counter<"source" | "status">;
  readonly sourceConsecutiveFailures: client.Gauge<"source">;
  readonly sourceLastSuccess: client.Gauge<"source">;
  private readonly busy: WorkerBusy;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry });
    // prom-client names three gauges `_total`, which promtool rejects (prometheus/client_js#283); the
    // per-type gauges of the same names without the suffix stay, and sum() over them gives the totals.
    for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"]) {
      this.registry.removeSingleMetric(name);
    }
    this.busy = new WorkerBusy(sources.workerThreads);
    // A fixed one-second window, so every scraper (Prometheus, `ingestd top`) sees the same ratio.
    setInterval(() => this.busy.sample(), 1000).unref();
    const busy = this.busy;

    new client.Gauge({
      name: "ingestd_build_info",
      help: "Always 1; the version label says which ingestd is running.",
      labelNames: ["version"],
      registers,
    }).set({ version: VERSION }, 1);
    this.sourceRuns = new client.Counter({
      name: "ingestd_source_runs_total",
      help: "Pull-source runs this daemon made, by source and outcome (success, failed).",
      labelNames: ["source", "outcome"],
      registers,
    });
    this.sourceRecords = new client.Counter({
      name: "ingestd_source_records_total",
      help: "Records pulled, by source and outcome (accepted, duplicate, rejected).",
      labelNames: ["source", "outcome"],
      registers,
    });
    this.sourceRequests = new client.Counter({
      name: "ingestd_source_requests_total",
      help: "HTTP requests pull sources made, by source and status (the HTTP status, or error for no answer).",
      labelNames: ["source", "status"],
      registers,
    });
    this.sourceConsecutiveFailures = new client.Gauge({
      name: "ingestd_source_consecutive_failures",
      help: "Runs of the source that failed in a row (0 after a run that succeeded).",
      labelNames: ["source"],
      registers,
    });
    this.sourceLastSuccess = new client.Gauge({
      name: "ingestd_source_last_success_timestamp_seconds",
      help: "Unix time of the source's last successful run (by any daemon on the database).",
      labelNames: ["source"],
      registers,
    });
    this.httpRequests = new client.Counter({
      name: "ingestd_http_requests_total",
      help: "HTTP requests answered, by route and status code.",
      labelNames: ["route", "status"],
      registers,
    });
    this.events = new client.Counter({
      name: "ingestd_events_total",
      help: "Records acknowledged, by stream and outcome (accepted = committed, rejected, duplicate).",
      labelNames: ["stream", "outcome"],
      registers,
    });
    this.ingestRequests = new client.Counter({
      name: "ingestd_ingest_requests_total",
      help: "HTTP ingest requests and WebSocket frames answered, by stream, transport and outcome (done, unparseable, db_unavailable, failed).",
      labelNames: ["stream", "transport", "outcome"],
      registers,
    });
    this.wsFrames = new client.Counter({
      name: "ingestd_ws_frames_total",
      help: "WebSocket frames acknowledged, by stream.",
      labelNames: ["stream"],
      registers,
    });
    this.ackLatency = new client.Histogram({
      name: "ingestd_ack_latency_seconds",
      help: "Time from request or frame arrival to its response or ack, after commit.",
      labelNames: ["stream", "transport"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.copyDuration = new client.Histogram({
      name: "ingestd_copy_duration_seconds",
      help: "Duration of the COPY and commit of the group-commit batch that held a request.",
      labelNames: ["stream"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    new client.Gauge({
      name: "ingestd_ring_used_bytes",
      help: "Bytes of the shared ring held by requests and frames not yet answered.",
      registers,
      collect() {
        this.set(sources.ringBytesInUse());
      },
    });
    new client.Gauge({
      name: "ingestd_ring_capacity_bytes",
      help: "Size of the shared ring.",
      registers,
      collect() {
        this.set(sources.ringCapacityBytes);
      },
    });
    new client.Gauge({
      name: "ingestd_ring_reserve_used_bytes",
      help: "Bytes of the ring's reserve for priority above 0 held by requests not yet answered.",
      registers,
      collect() {
        this.set(sources.ringReserveBytesInUse());
      },
    });
    new client.Gauge({
      name: "ingestd_ring_reserve_bytes",
      help: "Size of the ring's reserve for priority above 0 (part of the capacity).",
      registers,
      collect() {
        this.set(sources.ringReserveBytes);
      },
    });
    new client.Gauge({
      name: "ingestd_ring_waiting",
      help: "Requests and frames waiting for ring space.",
      registers,
      collect() {
        this.set(sources.ringWaiting());
      },
    });
    new client.Gauge({
      name: "ingestd_ws_connections",
      help: "Open WebSocket connections.",
      registers,
      collect() {
        this.set(sources.wsConnections());
      },
    });
    new client.Gauge({
      name: "ingestd_database_up",
      help: "1 when the last PostgreSQL probe succeeded, else 0.",
      registers,
      collect() {
        this.set(sources.databaseUp() ? 1 : 0);
      },
    });
    new client.Gauge({
      name: "ingestd_worker_pool_utilization_ratio",
      help: "Mean event-loop utilisation of the worker threads over the last second (0..1).",
      registers,
      collect() {
        this.set(busy.ratio);
      },
    });
    let reportedBusy = 0;
    new client.Counter({
      name: "ingestd_worker_busy_seconds_total",
      help: "Time the worker threads' event loops were busy, summed over workers; rate() gives busy workers.",
      registers,
      collect() {
        const add = busy.busySeconds - reportedBusy;
        if (add > 0) this.inc(add);
        reportedBusy = busy.busySeconds;
      },
    });
    new client.Gauge({
      name: "ingestd_worker_threads",
      help: "Worker threads in the pool.",
      registers,
      collect() {
        this.set(sources.workerThreads().length);
      },
    });
    new client.Gauge({
      name: "ingestd_tasks_in_flight",
      help: "Requests and frames dispatched to the worker pool and not yet settled.",
      registers,
      collect() {
        this.set(sources.tasksInFlight());
      },
    });
    new client.Gauge({
      name: "ingestd_tasks_waiting",
      help: "Requests and frames in the ring waiting for the workers' byte budget (part of tasks in flight).",
      registers,
      collect() {
        this.set(sources.tasksWaiting());
      },
    });
    new client.Gauge({
      name: "ingestd_commit_tasks",
      help: "Tasks validated in the workers whose rows wait for group commit (state=waiting) or are in the transaction under way (state=committing).",
      labelNames: ["state"],
      registers,
      collect() {
        this.set({ state: "waiting" }, sources.commitTasks("waiting"));
        this.set({ state: "committing" }, sources.commitTasks("committing"));
      },
    });
    // The workers' counts wrap at 2^32: each scrape adds what they grew by since the last, modulo 2^32.
    const seenCommits = { one_trip: 0, long: 0 };
    new client.Counter({
      name: "ingestd_group_commits_total",
      help: "Group-commit transactions committed: path=one_trip the whole batch in one round trip, path=long the rest (an id claim that could not be entered in one trip, producer sessions, upserts, replays, row isolation).",
      labelNames: ["path"],
      registers,
      collect() {
        for (const path of ["one_trip", "long"] as const) {
          const count = sources.groupCommits(path);
          const grown = (count - seenCommits[path]) >>> 0;
          seenCommits[path] = count;
          this.inc({ path }, grown);
        }
      },
    });
    new client.Gauge({
      name: "ingestd_worker_backlog_bytes",
      help: "Body bytes handed to the worker threads and not yet committed or refused.",
      registers,
      collect() {
        this.set(sources.workerBacklogBytes());
      },
    });
    new client.Gauge({
      name: "ingestd_dedup_filters",
      help: "Filters of sealed id-state generations (a group of generations counts once) the workers check (docs/storage.md#deduplication).",
      registers,
      collect() {
        this.set(sources.dedupFilters().count);
      },
    });
    new client.Gauge({
      name: "ingestd_dedup_filter_bytes",
      help: "Bytes of those filters, held once in shared memory for all workers.",
      registers,
      collect() {
        this.set(sources.dedupFilters().bytes);
      },
    });
    new client.Gauge({
      name: "ingestd_dedup_filtered_generations",
      help: "Sealed id-state generations whose keys those filters hold (each of a group's); the workers probe the others in PostgreSQL for every id.",
      registers,
      collect() {
        this.set(sources.dedupFilters().generations);
      },
    });
    new client.Gauge({
      name: "ingestd_dedup_filters_folded",
      help: "Of those filters, the ones folded to half their size to fit dedupFilterMb (8-bit fingerprints: about 2.9% false positives instead of 0.011%).",
      registers,
      collect() {
        this.set(sources.dedupFilters().folded);
      },
    });
    new client.Gauge({
      name: "ingestd_dedup_unfiltered_generations",
      help: "Sealed id-state generations left without a filter by dedupFilterMb: PostgreSQL probes them for every id.",
      registers,
      collect() {
        this.set(sources.dedupFilters().unfiltered);
      },
    });
  }
}

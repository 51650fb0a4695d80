/**
 * Prometheus metrics (prom-client). Names follow the conventions: `ingestd_` prefix, `_total` counters,
 * `_seconds` and `_bytes` units. Label values come from a fixed set (routes, streams, outcomes), never
 * from input, so cardinality stays bounded.
 */
import client from "prom-client";

export interface MetricsSources {
  ringBytesInUse: () => number;
  ringCapacityBytes: number;
  wsConnections: () => number;
  databaseUp: () => boolean;
  poolUtilization: () => number;
  tasksInFlight: () => number;
}

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new client.Registry();
  readonly httpRequests: client.Counter<"route" | "status">;
  readonly events: client.Counter<"stream" | "outcome">;
  readonly wsFrames: client.Counter<"stream">;
  readonly ackLatency: client.Histogram<"stream" | "transport">;
  readonly copyDuration: client.Histogram<"stream">;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry });
    this.httpRequests = new client.Counter({
      name: "ingestd_http_requests_total",
      help: "HTTP requests answered, by route and status code.",
      labelNames: ["route", "status"],
      registers,
    });
    this.events = new client.Counter({
      name: "ingestd_events_total",
      help: "Records received, by stream and outcome (accepted = committed, rejected, duplicate).",
      labelNames: ["stream", "outcome"],
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
      name: "ingestd_ring_bytes_in_use",
      help: "Bytes of the shared ring held by requests not yet answered.",
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
      name: "ingestd_ws_connections",
      help: "Open WebSocket connections.",
      registers,
      collect() {
        this.set(sources.wsConnections());
      },
    });
    new client.Gauge({
      name: "ingestd_database_up",
      help: "1 when the last PostgreSQL probe succeeded.",
      registers,
      collect() {
        this.set(sources.databaseUp() ? 1 : 0);
      },
    });
    new client.Gauge({
      name: "ingestd_worker_pool_utilization_ratio",
      help: "Share of the worker pool's capacity used since start (Piscina utilization).",
      registers,
      collect() {
        this.set(sources.poolUtilization());
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
  }
}

/**
 * What every acknowledgement records, once, whichever transport sent it: the ack latency (HDR and
 * Prometheus), the request and event counters, and the /stats tallies.
 */
import { now } from "../../shared/clock";
import type { IngestOutcome } from "../../shared/task-protocol";
import type { LatencyRecorder } from "../../ops/latency";
import type { Metrics } from "../../ops/metrics";
import type { Stats } from "../../ops/stats";

/** How records came in: pushed over HTTP or WebSocket, or fetched by a pull source. */
export type Transport = "http" | "ws" | "pull";

export class AckTelemetry {
  constructor(
    private readonly latency: LatencyRecorder,
    private readonly metrics: Metrics,
    private readonly stats: Stats,
  ) {}

  /** A request answered or a frame acked (`outcome` null: refused before it reached a worker). */
  acknowledged(stream: string, transport: Transport, receivedAt: number, outcome: IngestOutcome | null): void {
    const ms = now() - receivedAt;
    this.latency.record("ack", stream, ms);
    this.stats.observe(outcome);
    const metrics = this.metrics;
    metrics.ackLatency.observe({ stream, transport }, ms / 1000);
    metrics.ingestRequests.inc({ stream, transport, outcome: outcome?.kind ?? "none" });
    if (outcome && outcome.kind === "done") {
      if (outcome.accepted > 0) metrics.events.inc({ stream, outcome: "accepted" }, outcome.accepted);
      if (outcome.rejected > 0) metrics.events.inc({ stream, outcome: "rejected" }, outcome.rejected);
      if (outcome.duplicates > 0) metrics.events.inc({ stream, outcome: "duplicate" }, outcome.duplicates);
    }
  }
}

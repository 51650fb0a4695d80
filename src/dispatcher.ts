/**
 * Hands ring descriptors to the Piscina worker pool and turns each settled task into latency and metrics
 * records. It never frees ring regions: whoever allocated a region frees it once it has answered, because a
 * WebSocket frame may be resubmitted from the same region while the database is down.
 */
import path from "node:path";
import Piscina from "piscina";
import { now } from "./clock";
import type { LatencyRecorder } from "./latency";
import type { Logger } from "./logger";
import type { Metrics } from "./metrics";
import type { RingRegion } from "./ring";
import { Stats } from "./stats";
import { emptyOutcome, type IngestOutcome, type IngestTask, type TaskFormat } from "../workers/task-protocol";
import type { WorkerData } from "../workers/ingest-task";

export interface DispatcherOptions {
  workers: number;
  workerData: WorkerData;
}

export interface Submission {
  stream: string;
  format: TaskFormat;
  envelope: boolean;
  region: RingRegion;
  batchId: string;
  priority: number;
  receivedAt: number;
  ringAt: number;
  source: string;
  recordBatch: boolean;
}

export type Transport = "http" | "ws";

export class Dispatcher {
  readonly pool: Piscina<IngestTask, IngestOutcome>;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  latency: LatencyRecorder | null = null;
  metrics: Metrics | null = null;
  log: Logger | null = null;
  /** Last time a failed task was logged: an outage fails every task, the log gets one line a second. */
  private lastFailureLog = 0;
  /** GET /stats counters, fed by observeAck like the events metric. */
  readonly stats = new Stats();

  constructor(options: DispatcherOptions) {
    this.pool = new Piscina({
      filename: path.resolve(__dirname, "../workers/ingest-task.js"),
      minThreads: options.workers,
      maxThreads: options.workers,
      idleTimeout: Infinity,
      // Tasks wait on group commit, so each worker holds many at once; the ring bounds the total. High
      // enough that tasks never wait in Piscina's FIFO queue: priority is applied by group commit inside
      // the worker, which only sees tasks it has been given.
      concurrentTasksPerWorker: 4096,
      // Workers do async I/O (their COPY connection): they must not block in Atomics.wait between tasks.
      atomics: "disabled",
      workerData: options.workerData,
    });
  }

  get tasksInFlight(): number {
    return this.inFlight;
  }

  /** Runs one body through a worker. Never rejects: a worker failure becomes a `failed` outcome. */
  async run(sub: Submission): Promise<IngestOutcome> {
    const task: IngestTask = {
      stream: sub.stream,
      format: sub.format,
      envelope: sub.envelope,
      offset: sub.region.offset,
      length: sub.region.length,
      batchId: sub.batchId,
      priority: sub.priority,
      receivedAt: sub.receivedAt,
      ringAt: sub.ringAt,
      source: sub.source,
      recordBatch: sub.recordBatch,
    };
    this.inFlight++;
    try {
      const outcome = await this.pool.run(task);
      this.observeStages(sub, outcome);
      if (outcome.kind === "db_unavailable" || outcome.kind === "failed") this.logFailure(sub.stream, outcome.kind, outcome.message);
      return outcome;
    } catch (err) {
      this.logFailure(sub.stream, "failed", (err as Error).message);
      return emptyOutcome(sub, "failed", `worker failed: ${(err as Error).message}`);
    } finally {
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private logFailure(stream: string, kind: string, message: string): void {
    const t = Date.now();
    if (t - this.lastFailureLog < 1000) return;
    this.lastFailureLog = t;
    this.log?.warn({ stream, kind, err: message }, "ingest task not committed");
  }

  /** Records the acknowledgement of a settled request or frame. */
  observeAck(stream: string, transport: Transport, receivedAt: number, outcome: IngestOutcome | null): void {
    const ms = now() - receivedAt;
    this.latency?.record("ack", stream, ms);
    this.stats.observe(stream, outcome);
    const metrics = this.metrics;
    if (!metrics) return;
    metrics.ackLatency.observe({ stream, transport }, ms / 1000);
    metrics.ingestRequests.inc({ stream, transport, outcome: outcome?.kind ?? "none" });
    if (outcome && outcome.kind === "done") {
      if (outcome.accepted > 0) metrics.events.inc({ stream, outcome: "accepted" }, outcome.accepted);
      if (outcome.rejected > 0) metrics.events.inc({ stream, outcome: "rejected" }, outcome.rejected);
      if (outcome.duplicates > 0) metrics.events.inc({ stream, outcome: "duplicate" }, outcome.duplicates);
    }
  }

  /** Resolves when no task is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    await this.pool.close({ force: false }).catch(() => this.pool.destroy());
  }

  private observeStages(sub: Submission, outcome: IngestOutcome): void {
    const latency = this.latency;
    if (latency) {
      latency.record("receive", sub.stream, sub.ringAt - sub.receivedAt);
      if (outcome.validatedAt > 0) latency.record("validate", sub.stream, outcome.validatedAt - sub.ringAt);
      if (outcome.kind === "done" && outcome.committedAt > 0) {
        latency.record("commit", sub.stream, outcome.committedAt - outcome.validatedAt);
      }
    }
    if (outcome.copyMs > 0) this.metrics?.copyDuration.observe({ stream: sub.stream }, outcome.copyMs / 1000);
  }
}

/**
 * Hands ring descriptors to the Piscina worker pool and turns each settled task into latency and metrics
 * records. It never frees ring regions: whoever allocated a region frees it once it has answered, because a
 * WebSocket frame may be resubmitted from the same region while the database is down.
 *
 * Work is admitted to the workers by bytes (resident memory bounded: docs/architecture.md#ring-and-backpressure). A task in a worker is held
 * there as parsed records and encoded COPY rows until its group commit (measured: 1.5-4.5 times its body's
 * size, the more the smaller the records), and V8 lets a worker's heap grow to about 4 times what is live
 * between full GCs. Handing the workers everything in the 64 MiB ring made the daemon peak at 640-1070 MiB
 * under 200 producers; so the workers get at most `maxWorkerBytes` of bodies at once (each task also counts
 * TASK_COST_BYTES for its fixed overhead). The rest wait here, as descriptors of bodies already in the ring
 * (counted there), ordered by priority: higher first, arrival order within a priority. Inside a worker,
 * group commit orders its sealed batches by priority too.
 */
import path from "node:path";
import Piscina from "piscina";
import { envelopePriority } from "./envelope-priority";
import type { LatencyRecorder } from "../ops/latency";
import type { Logger } from "../ops/logger";
import type { Metrics } from "../ops/metrics";
import type { RingRegion } from "./ring";
import { emptyOutcome, type IngestOutcome, type IngestTask, type SessionTask, type TaskFormat, type WorkerData } from "../shared/task-protocol";

export interface DispatcherOptions {
  workers: number;
  latency: LatencyRecorder;
  metrics: Metrics;
  log: Logger;
  workerData: WorkerData;
  /**
   * Body bytes handed to the workers at once (all workers together). A task is admitted while it fits, or
   * while fewer tasks than workers are running, so a body larger than the budget still gets a worker.
   */
  maxWorkerBytes: number;
}

/** What a task costs in the worker besides its body (task, outcome, closures, batch bookkeeping). */
export const TASK_COST_BYTES = 1024;
/** Priorities are 0..10 (docs/architecture.md#priority); anything else is clamped into that range. */
const MAX_PRIORITY = 10;

interface Queued {
  cost: number;
  /** Starts the task once admitted. */
  go: () => void;
}

/** FIFO with O(1) shift: a head index into an array that is compacted once half of it is consumed. */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(item: T): void {
    this.items.push(item);
  }
  peek(): T | undefined {
    return this.items[this.head];
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    (this.items as Array<T | undefined>)[this.head] = undefined;
    this.head++;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

export interface Submission {
  stream: string;
  format: TaskFormat;
  envelope: boolean;
  region: RingRegion;
  requestId: string;
  priority: number;
  receivedAt: number;
  ringAt: number;
  source: string;
  recordBatch: boolean;
}

export class Dispatcher {
  readonly pool: Piscina<IngestTask, IngestOutcome>;
  /** Submitted and not settled: waiting here or in a worker. */
  private inFlight = 0;
  /** Waiting for admission, one FIFO per priority. */
  private readonly queues: Array<Fifo<Queued>> = Array.from({ length: MAX_PRIORITY + 1 }, () => new Fifo<Queued>());
  private queued = 0;
  /** Admitted to the pool and not settled, and what they cost against maxWorkerBytes. */
  private running = 0;
  private runningBytes = 0;
  private readonly workers: number;
  readonly maxWorkerBytes: number;
  /** The ring, to read an envelope's priority when its body has to wait. */
  private readonly ring: Buffer;
  private idleWaiters: Array<() => void> = [];
  private readonly latency: LatencyRecorder;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  /** Last time a failed task was logged: an outage fails every task, the log gets one line a second. */
  private lastFailureLog = 0;

  constructor(options: DispatcherOptions) {
    this.workers = options.workers;
    this.latency = options.latency;
    this.metrics = options.metrics;
    this.log = options.log;
    this.maxWorkerBytes = options.maxWorkerBytes;
    this.ring = Buffer.from(options.workerData.ring);
    this.pool = new Piscina({
      filename: path.resolve(__dirname, "../../workers/ingest-task.js"),
      minThreads: options.workers,
      maxThreads: options.workers,
      idleTimeout: Infinity,
      // Tasks wait on group commit, so each worker holds many at once; admission by bytes (below) bounds
      // the total. High enough that an admitted task never waits in Piscina's FIFO queue, which knows no
      // priority.
      concurrentTasksPerWorker: Math.max(16, options.workers + Math.ceil(options.maxWorkerBytes / TASK_COST_BYTES)),
      // Workers do async I/O (their COPY connection): they must not block in Atomics.wait between tasks.
      atomics: "disabled",
      workerData: options.workerData,
    });
  }

  /** Tasks submitted and not settled (waiting for a worker or in one). */
  get tasksInFlight(): number {
    return this.inFlight;
  }

  /** Tasks waiting for admission to a worker. */
  get tasksQueued(): number {
    return this.queued;
  }

  /** Body bytes (plus per-task cost) admitted to the workers and not settled. */
  get bytesInWorkers(): number {
    return this.runningBytes;
  }

  /**
   * Runs one body through a worker, once the workers have room for it (see the class comment). Never
   * rejects: a worker failure becomes a `failed` outcome.
   */
  run(sub: Submission): Promise<IngestOutcome> {
    const cost = sub.region.length + TASK_COST_BYTES;
    return this.admitted(cost, () => Math.min(MAX_PRIORITY, Math.max(0, Math.trunc(sub.priority) || 0, this.hintedPriority(sub))), () => this.execute(sub));
  }

  /**
   * Runs consecutive frames of one producer session as one task on one worker (docs/websocket-protocol.md#producer-sessions);
   * each frame's outcome, in order. Never rejects: a worker failure is a `failed` outcome for every frame.
   */
  runSession(task: SessionTask): Promise<IngestOutcome[]> {
    let cost = 0;
    for (const f of task.frames) cost += f.length + TASK_COST_BYTES;
    return this.admitted(cost, () => 0, () => this.executeSession(task));
  }

  /** Runs `exec` once the workers have room for `cost` (see the class comment). */
  private admitted<T>(cost: number, priority: () => number, exec: () => Promise<T>): Promise<T> {
    this.inFlight++;
    let outcome: Promise<T>;
    if (this.queued === 0 && this.admits(cost)) {
      outcome = this.start(cost, exec);
    } else {
      outcome = new Promise<T>((resolve) => this.queues[priority()].push({ cost, go: () => resolve(this.start(cost, exec)) }));
      this.queued++;
    }
    return outcome.finally(() => {
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** The priority an envelope body names (the front sets 0: it does not parse bodies); see envelope-priority. */
  private hintedPriority(sub: Submission): number {
    if (!sub.envelope) return 0;
    return envelopePriority(this.ring.subarray(sub.region.offset, sub.region.offset + sub.region.length));
  }

  private admits(cost: number): boolean {
    return this.running < this.workers || this.runningBytes + cost <= this.maxWorkerBytes;
  }

  /** Admits waiting tasks, highest priority first, while they fit; a task that does not fit blocks the rest. */
  private pump(): void {
    for (let p = MAX_PRIORITY; p >= 0 && this.queued > 0; ) {
      const head = this.queues[p].peek();
      if (head === undefined) {
        p--;
        continue;
      }
      if (!this.admits(head.cost)) return;
      this.queues[p].shift();
      this.queued--;
      head.go();
    }
  }

  private async start<T>(cost: number, exec: () => Promise<T>): Promise<T> {
    this.running++;
    this.runningBytes += cost;
    try {
      return await exec();
    } finally {
      this.running--;
      this.runningBytes -= cost;
      this.pump();
    }
  }

  private async execute(sub: Submission): Promise<IngestOutcome> {
    const task: IngestTask = {
      stream: sub.stream,
      format: sub.format,
      envelope: sub.envelope,
      offset: sub.region.offset,
      length: sub.region.length,
      requestId: sub.requestId,
      priority: sub.priority,
      receivedAt: sub.receivedAt,
      ringAt: sub.ringAt,
      source: sub.source,
      recordBatch: sub.recordBatch,
    };
    try {
      const outcome = await this.pool.run(task);
      this.observeStages(sub, outcome);
      if (outcome.kind === "db_unavailable" || outcome.kind === "failed") this.logFailure(sub.stream, outcome.kind, outcome.message);
      return outcome;
    } catch (err) {
      this.logFailure(sub.stream, "failed", (err as Error).message);
      return emptyOutcome(sub, "failed", `worker failed: ${(err as Error).message}`);
    }
  }

  private async executeSession(task: SessionTask): Promise<IngestOutcome[]> {
    try {
      const outcomes = (await this.pool.run(task as unknown as IngestTask, { name: "ingestSession" })) as unknown as IngestOutcome[];
      for (const o of outcomes) if (o.kind === "db_unavailable" || o.kind === "failed") this.logFailure(task.stream, o.kind, o.message);
      return outcomes;
    } catch (err) {
      this.logFailure(task.stream, "failed", (err as Error).message);
      return task.frames.map((f) => emptyOutcome({ requestId: `ws-${task.producer}-${f.seq}`, priority: 0 }, "failed", `worker failed: ${(err as Error).message}`));
    }
  }

  private logFailure(stream: string, kind: string, message: string): void {
    const t = Date.now();
    if (t - this.lastFailureLog < 1000) return;
    this.lastFailureLog = t;
    this.log.warn({ stream, kind, err: message }, "ingest task not committed");
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
    latency.record("receive", sub.stream, sub.ringAt - sub.receivedAt);
    if (outcome.validatedAt > 0) latency.record("validate", sub.stream, outcome.validatedAt - sub.ringAt);
    if (outcome.kind === "done" && outcome.committedAt > 0) {
      latency.record("commit", sub.stream, outcome.committedAt - outcome.validatedAt);
    }
    if (outcome.copyMs > 0) this.metrics.copyDuration.observe({ stream: sub.stream }, outcome.copyMs / 1000);
  }
}

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
 * (counted there), ordered by priority: higher first, arrival order within a priority.
 *
 * Priority (docs/architecture.md#priority): the budget is counted per level. A task of priority p is admitted while the
 * work of priority >= p in the workers fits `maxWorkerBytes`, so it waits here behind work of its own or
 * higher priority, not behind lower-priority work, and reaches its worker while lower-priority batches
 * still wait there (group commit runs it first). With one budget for all levels, a priority task waited
 * for a lower-priority commit to free room, and by the time it reached the worker (1-25 ms later on a
 * loaded 2-core machine) the worker had started its next lower-priority transaction (1-15 ms): priority
 * lost that race at random. All levels together stay under twice the budget (memory, as above); that cap
 * binds only when three or more levels each fill the budget, and then the highest waiting task takes the
 * next room freed.
 */
import path from "node:path";
import Piscina from "piscina";
import { envelopePriority } from "./envelope-priority";
import type { LatencyRecorder } from "../ops/latency";
import type { Logger } from "../ops/logger";
import type { Metrics } from "../ops/metrics";
import type { RingRegion } from "./ring";
import {
  emptyOutcome,
  type IngestOutcome,
  type IngestTask,
  type BodyEncoding,
  type SessionTask,
  type TaskFormat,
  type WorkerData,
} from "../shared/task-protocol";

export interface DispatcherOptions {
  workers: number;
  latency: LatencyRecorder;
  metrics: Metrics;
  log: Logger;
  workerData: WorkerData;
  /**
   * Body bytes handed to the workers at once (all workers together), counted per priority level (see the
   * comment at the top). A task is admitted while it fits, or while fewer tasks than workers are running,
   * so a body larger than the budget still gets a worker.
   */
  maxWorkerBytes: number;
  /** Each worker's V8 young generation (config workerYoungGenerationMb). */
  youngGenerationMb: number;
}

/** What a task costs in the worker besides its body (task, outcome, closures, batch bookkeeping). */
export const TASK_COST_BYTES = 1024;
/** Priorities are 0..10 (docs/architecture.md#priority); anything else is clamped into that range. */
const MAX_PRIORITY = 10;
const LEVELS = MAX_PRIORITY + 1;

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

/**
 * The admission policy of the Dispatcher (see the comment at the top) as bookkeeping only: what runs in the
 * workers per priority level, and what waits, one FIFO per level. `admit` is called, synchronously from
 * `done`, for each waiting item that may start; every item started is reported to `done` once settled.
 */
export class WorkerAdmission<T extends { readonly cost: number }> {
  private readonly queues: Array<Fifo<T>> = Array.from({ length: LEVELS }, () => new Fifo<T>());
  private waitingCount = 0;
  private readonly runningAt = new Int32Array(LEVELS);
  private readonly runningBytesAt = new Float64Array(LEVELS);
  private running = 0;
  private runningBytes = 0;

  constructor(
    private readonly workers: number,
    private readonly budget: number,
    private readonly admit: (item: T, priority: number) => void,
  ) {}

  /** Priorities are 0..10; anything else is clamped into that range. */
  static level(priority: number): number {
    return Math.min(MAX_PRIORITY, Math.max(0, Math.trunc(priority) || 0));
  }

  /** Items waiting for admission. */
  get waiting(): number {
    return this.waitingCount;
  }

  /** Cost of the items started and not done. */
  get bytes(): number {
    return this.runningBytes;
  }

  /** True, and counted as started, when an item may start now; otherwise false: `enqueue` it. */
  tryStart(priority: number, cost: number): boolean {
    if (this.waitingAtOrAbove(priority) || !this.fits(priority, cost)) return false;
    this.count(priority, cost);
    return true;
  }

  /** Waits behind the items of its own or higher priority; `admit` is called once it may start. */
  enqueue(item: T, priority: number): void {
    this.queues[priority].push(item);
    this.waitingCount++;
  }

  /** A started item settled: its room goes to the waiting items that now fit, highest priority first. */
  done(priority: number, cost: number): void {
    this.runningAt[priority]--;
    this.runningBytesAt[priority] -= cost;
    this.running--;
    this.runningBytes -= cost;
    this.pump();
  }

  private count(priority: number, cost: number): void {
    this.runningAt[priority]++;
    this.runningBytesAt[priority] += cost;
    this.running++;
    this.runningBytes += cost;
  }

  private waitingAtOrAbove(priority: number): boolean {
    if (this.waitingCount === 0) return false;
    for (let p = MAX_PRIORITY; p >= priority; p--) if (this.queues[p].length > 0) return true;
    return false;
  }

  /**
   * Whether the work of priority >= `priority` leaves room for `cost` in the budget (or runs on fewer tasks
   * than there are workers, so a body larger than the budget still gets a worker), and all of it stays
   * under twice the budget.
   */
  private fits(priority: number, cost: number): boolean {
    let tasks = 0;
    let bytes = 0;
    for (let p = MAX_PRIORITY; p >= priority; p--) {
      tasks += this.runningAt[p];
      bytes += this.runningBytesAt[p];
    }
    return (tasks < this.workers || bytes + cost <= this.budget) && this.underCap(cost);
  }

  private underCap(cost: number): boolean {
    return this.running < this.workers || this.runningBytes + cost <= 2 * this.budget;
  }

  /**
   * Admits waiting items, highest priority first. One that does not fit its level's budget blocks the rest
   * of its level (so a large one is not starved by small ones) but not the levels below, whose work does
   * not count against that budget; one that does not fit under the cap blocks everything below it.
   */
  private pump(): void {
    let tasks = 0;
    let bytes = 0;
    for (let p = MAX_PRIORITY; p >= 0 && this.waitingCount > 0; p--) {
      tasks += this.runningAt[p];
      bytes += this.runningBytesAt[p];
      const queue = this.queues[p];
      for (let head = queue.peek(); head !== undefined; head = queue.peek()) {
        if (tasks >= this.workers && bytes + head.cost > this.budget) break;
        if (!this.underCap(head.cost)) return;
        queue.shift();
        this.waitingCount--;
        tasks++;
        bytes += head.cost;
        this.count(p, head.cost);
        this.admit(head, p);
      }
    }
  }
}

interface Queued {
  cost: number;
  /** Starts the task once admitted. */
  go: () => void;
}

export interface Submission {
  stream: string;
  format: TaskFormat;
  encoding: BodyEncoding;
  envelope: boolean;
  region: RingRegion;
  requestId: string;
  priority: number;
  receivedAt: number;
  ringAt: number;
  source: string;
  recordBatch: boolean;
  /** Ask the worker for each record's outcome (IngestTask.recordOutcomes). */
  recordOutcomes?: boolean;
  /** IngestTask.replayOf. */
  replayOf?: string[];
}

export class Dispatcher {
  readonly pool: Piscina<IngestTask, IngestOutcome>;
  /** Submitted and not settled: waiting here or in a worker. */
  private inFlight = 0;
  /** Admitted to the pool and not settled, and what waits for admission. */
  private readonly admission: WorkerAdmission<Queued>;
  readonly maxWorkerBytes: number;
  /** The ring, to read an envelope's priority. */
  private readonly ring: Buffer;
  private idleWaiters: Array<() => void> = [];
  private readonly latency: LatencyRecorder;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  /** Last time a failed task was logged: an outage fails every task, the log gets one line a second. */
  private lastFailureLog = 0;

  constructor(options: DispatcherOptions) {
    this.latency = options.latency;
    this.metrics = options.metrics;
    this.log = options.log;
    this.maxWorkerBytes = options.maxWorkerBytes;
    this.admission = new WorkerAdmission<Queued>(options.workers, options.maxWorkerBytes, (q) => q.go());
    this.ring = Buffer.from(options.workerData.ring);
    this.pool = new Piscina({
      filename: path.resolve(__dirname, "../../workers/ingest-task.js"),
      minThreads: options.workers,
      maxThreads: options.workers,
      idleTimeout: Infinity,
      // Tasks wait on group commit, so each worker holds many at once; admission by bytes (below) bounds
      // the total. High enough that an admitted task never waits in Piscina's FIFO queue, which knows no
      // priority. Up to twice the budget (see the comment at the top).
      concurrentTasksPerWorker: Math.max(16, 2 * (options.workers + Math.ceil(options.maxWorkerBytes / TASK_COST_BYTES))),
      // Workers do async I/O (their COPY connection): they must not block in Atomics.wait between tasks.
      atomics: "disabled",
      workerData: options.workerData,
      resourceLimits: { maxYoungGenerationSizeMb: options.youngGenerationMb },
    });
  }

  /** Tasks submitted and not settled (waiting for a worker or in one). */
  get tasksInFlight(): number {
    return this.inFlight;
  }

  /** Tasks waiting for admission to a worker. */
  get tasksQueued(): number {
    return this.admission.waiting;
  }

  /** Body bytes (plus per-task cost) admitted to the workers and not settled. */
  get bytesInWorkers(): number {
    return this.admission.bytes;
  }

  /**
   * Runs one body through a worker, once the workers have room for it (see the class comment). Never
   * rejects: a worker failure becomes a `failed` outcome.
   */
  run(sub: Submission): Promise<IngestOutcome> {
    const cost = sub.region.length + TASK_COST_BYTES;
    const priority = this.priorityOf(sub);
    return this.admitted(cost, priority, () => this.execute(sub, priority));
  }

  /**
   * Runs consecutive frames of one producer session as one task on one worker (docs/websocket-protocol.md#producer-sessions);
   * each frame's outcome, in order. Never rejects: a worker failure is a `failed` outcome for every frame.
   * WebSocket frames are priority 0.
   */
  runSession(task: SessionTask): Promise<IngestOutcome[]> {
    let cost = 0;
    for (const f of task.frames) cost += f.length + TASK_COST_BYTES;
    return this.admitted(cost, 0, () => this.executeSession(task));
  }

  /** Runs `exec` once the workers have room for `cost` at `priority` (see the comment at the top). */
  private admitted<T>(cost: number, priority: number, exec: () => Promise<T>): Promise<T> {
    this.inFlight++;
    let outcome: Promise<T>;
    if (this.admission.tryStart(priority, cost)) {
      outcome = this.start(cost, priority, exec);
    } else {
      outcome = new Promise<T>((resolve) =>
        this.admission.enqueue({ cost, go: () => resolve(this.start(cost, priority, exec)) }, priority),
      );
    }
    return outcome.finally(() => {
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /**
   * The submission's priority (named outside the body, or found by the front while it waited for the ring),
   * or the higher one an envelope body names (the front does not parse bodies; see envelope-priority).
   */
  private priorityOf(sub: Submission): number {
    const named = WorkerAdmission.level(sub.priority);
    if (!sub.envelope || named === MAX_PRIORITY) return named;
    return Math.max(named, envelopePriority(this.ring.subarray(sub.region.offset, sub.region.offset + sub.region.length)));
  }

  /** Runs an admitted task (already counted by `admission`) and reports it done once settled. */
  private async start<T>(cost: number, priority: number, exec: () => Promise<T>): Promise<T> {
    try {
      return await exec();
    } finally {
      this.admission.done(priority, cost);
    }
  }

  private async execute(sub: Submission, priority: number): Promise<IngestOutcome> {
    const task: IngestTask = {
      stream: sub.stream,
      format: sub.format,
      encoding: sub.encoding,
      envelope: sub.envelope,
      offset: sub.region.offset,
      length: sub.region.length,
      requestId: sub.requestId,
      priority,
      receivedAt: sub.receivedAt,
      ringAt: sub.ringAt,
      source: sub.source,
      recordBatch: sub.recordBatch,
    };
    if (sub.recordOutcomes) task.recordOutcomes = true;
    if (sub.replayOf) task.replayOf = sub.replayOf;
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
      return task.frames.map((f) =>
        emptyOutcome({ requestId: `ws-${task.producer}-${f.seq}`, priority: 0 }, "failed", `worker failed: ${(err as Error).message}`),
      );
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

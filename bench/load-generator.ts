/**
 * A load-generator process (forked by the orchestrator; see generator-protocol.ts). It drives the daemon
 * over WebSocket (full speed or paced) or HTTP, records ack latency in an HDR histogram and reports
 * counts back. It runs in its own process so its CPU is not the orchestrator's and can be measured.
 *
 * Hot path: frames are pre-built FrameTemplates whose ids and timestamps are rewritten in place; per frame the only
 * allocations are the ones `ws` / undici make themselves and the parse of the small ack.
 */
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { Pool, type Dispatcher } from "undici";
import WebSocket from "ws";
import type * as hdr from "hdr-histogram-js";
import { FrameTemplate } from "./event-factory";
import type { FromGenerator, GeneratorResult, GeneratorSpec, ToGenerator } from "./generator-protocol";
import { encodeHistogram, newLatencyHistogram, recordMs } from "./latency-histogram";

const now = () => performance.now();
/** Frames are JSON text; compression would cost the generator CPU the daemon does not have to spend. */
const TEXT_FRAME = { binary: false, compress: false } as const;
const epoch = (t: number) => performance.timeOrigin + t;

/** Counters shared by all connections or slots of this generator. */
class Tally {
  readonly histogram: hdr.Histogram = newLatencyHistogram();
  startedAt = 0;
  endedAt = 0;
  loadEndedAt = 0;
  framesSent = 0;
  framesAcked = 0;
  eventsSent = 0;
  accepted = 0;
  rejected = 0;
  duplicates = 0;
  failures = 0;
  failureSamples: string[] = [];
  unacked = 0;
  unsent = 0;
  unexpectedCloses: string[] = [];
  lateSends = 0;
  maxSendLagMs = 0;
  frameBytes = 0;
  /** Per-interval breakdown (soak), by time since `startedAt`; empty when the spec asks for none. */
  intervalMs = 0;
  readonly intervals: { accepted: number; histogram: hdr.Histogram }[] = [];

  /** One answered (or abandoned) frame: its latency and accepted events, in the run and in its interval. */
  record(at: number, latencyMs: number, accepted: number): void {
    recordMs(this.histogram, latencyMs);
    this.accepted += accepted;
    if (this.intervalMs > 0) {
      const k = Math.max(0, Math.floor((at - this.startedAt) / this.intervalMs));
      while (this.intervals.length <= k) this.intervals.push({ accepted: 0, histogram: newLatencyHistogram() });
      const interval = this.intervals[k];
      recordMs(interval.histogram, latencyMs);
      interval.accepted += accepted;
    }
  }

  fail(description: string): void {
    this.failures++;
    if (this.failureSamples.length < 5 && !this.failureSamples.includes(description)) this.failureSamples.push(description);
  }

  acked(at: number): void {
    this.framesAcked++;
    if (at > this.endedAt) this.endedAt = at;
  }
}

function send(message: FromGenerator): Promise<void> {
  return new Promise((resolve) => process.send!(message, () => resolve()));
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket

/** Sends a frame as soon as the window allows: full speed (closed loop) or from a paced backlog. */
class WsProducer {
  private socket!: WebSocket;
  private window = 1;
  private seqSent = 0;
  private seqAcked = 0;
  /** Intended send time of each unacknowledged frame, by seq modulo the capacity (window ≤ 1024). */
  private readonly intended = new Float64Array(1024);
  /** Paced: intended send times not sent yet because the window was full. */
  private readonly backlog: number[] = [];
  private backlogHead = 0;
  private closedByUs = false;
  private done = false;
  private onDrained: (() => void) | null = null;
  /** Full speed: no sends at or after this time. */
  deadline = Infinity;

  constructor(
    private readonly spec: GeneratorSpec,
    private readonly tally: Tally,
    private readonly template: FrameTemplate,
    private readonly paced: boolean,
  ) {}

  connect(timeoutMs: number): Promise<void> {
    // A fresh producer id per connection, so its frames number from 1 whatever the database holds.
    const session = this.spec.producerSessions ? `&producer=bench-${randomUUID()}` : "";
    const url = `ws://127.0.0.1:${this.spec.port}/v1/ws?stream=${encodeURIComponent(this.spec.stream)}${session}`;
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = this.spec.token ? { authorization: `Bearer ${this.spec.token}` } : {};
      const socket = new WebSocket(url, { perMessageDeflate: false, headers });
      this.socket = socket;
      const timer = setTimeout(() => reject(new Error(`no hello from ${url} within ${timeoutMs} ms`)), timeoutMs);
      let helloSeen = false;
      socket.on("error", (err) => {
        if (!helloSeen) {
          clearTimeout(timer);
          reject(err);
        } else this.tally.fail(`socket error: ${err.message}`);
      });
      socket.on("close", (code, reason) => {
        if (!helloSeen) {
          clearTimeout(timer);
          reject(new Error(`closed before hello: ${code} ${reason.toString()}`));
        }
        if (!this.closedByUs) this.tally.unexpectedCloses.push(`${code} ${reason.toString()}`.trim());
        this.finish();
      });
      socket.on("message", (data: Buffer) => {
        const msg = JSON.parse(data.toString());
        if (!helloSeen) {
          if (msg.type !== "hello" || !(msg.window >= 1)) {
            clearTimeout(timer);
            reject(new Error(`expected a hello, got ${data.toString().slice(0, 200)}`));
            return;
          }
          helloSeen = true;
          this.window = Math.min(msg.window, this.intended.length, this.spec.inFlight > 0 ? this.spec.inFlight : Infinity);
          clearTimeout(timer);
          resolve();
          return;
        }
        if (msg.type === "ack") this.onAck(msg);
      });
    });
  }

  private onAck(msg: { seq: number; accepted: number; rejected: number; duplicates: number; errors?: { message?: string }[] }): void {
    const t = now();
    const tally = this.tally;
    if (msg.seq !== this.seqAcked + 1) tally.fail(`ack out of order: got seq ${msg.seq} after ${this.seqAcked}`);
    this.seqAcked = msg.seq;
    tally.record(t, t - this.intended[msg.seq & 1023], msg.accepted);
    tally.acked(t);
    tally.rejected += msg.rejected;
    tally.duplicates += msg.duplicates;
    if (msg.rejected > 0) tally.fail(`rejected: ${msg.errors?.[0]?.message ?? "?"}`);
    this.pump();
  }

  /** Paced: a frame is due at `intendedAt`. */
  enqueue(intendedAt: number): void {
    this.backlog.push(intendedAt);
    this.pump();
  }

  get backlogLength(): number {
    return this.backlog.length - this.backlogHead;
  }

  /** Sends while the window has room (and, paced, while frames are due). */
  pump(): void {
    if (this.done) return;
    while (this.seqSent - this.seqAcked < this.window) {
      const t = now();
      let intendedAt: number;
      if (this.paced) {
        if (this.backlogHead === this.backlog.length) break;
        intendedAt = this.backlog[this.backlogHead++];
        if (this.backlogHead === this.backlog.length) {
          this.backlog.length = 0;
          this.backlogHead = 0;
        }
        const lag = t - intendedAt;
        if (lag > 1) {
          this.tally.lateSends++;
          if (lag > this.tally.maxSendLagMs) this.tally.maxSendLagMs = lag;
        }
      } else {
        if (t >= this.deadline) break;
        intendedAt = t;
      }
      const seq = ++this.seqSent;
      this.intended[seq & 1023] = intendedAt;
      const frame = this.template.stamp();
      this.socket.send(frame, TEXT_FRAME);
      this.tally.framesSent++;
      this.tally.eventsSent += this.spec.eventsPerFrame;
    }
    if (this.onDrained && this.seqSent === this.seqAcked && this.backlogLength === 0) this.finish();
  }

  /**
   * Paced, at the deadline: frames still waiting for window room are not sent. Each is recorded with the
   * time it has waited so far, a lower bound of its latency, so the histogram does not silently drop the
   * worst of the run (coordinated omission).
   */
  abandonBacklog(): void {
    const t = now();
    for (let i = this.backlogHead; i < this.backlog.length; i++) {
      this.tally.record(t, t - this.backlog[i], 0);
      this.tally.unsent++;
    }
    this.backlog.length = 0;
    this.backlogHead = 0;
  }

  /** Resolves once every sent frame is acked (and, paced, the backlog sent), the socket closed, or the timeout. */
  drain(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.finish(), timeoutMs);
      this.onDrained = () => {
        clearTimeout(timer);
        resolve();
      };
      if (this.done || (this.seqSent === this.seqAcked && this.backlogLength === 0)) this.finish();
    });
  }

  private finish(): void {
    if (!this.done) {
      this.done = true;
      this.tally.unacked += this.seqSent - this.seqAcked;
      if (this.socket.readyState === WebSocket.OPEN) {
        this.closedByUs = true;
        this.socket.close(1000, "bench done");
      }
    }
    const cb = this.onDrained;
    this.onDrained = null;
    cb?.();
  }

  /** Kicks the full-speed loop off. */
  start(): void {
    this.pump();
  }
}

async function runWs(spec: GeneratorSpec, tally: Tally, paced: boolean, go: Promise<void>): Promise<void> {
  const producers: WsProducer[] = [];
  for (let c = 0; c < spec.connections; c++) {
    const template = new FrameTemplate(spec.idKind, spec.eventsPerFrame);
    tally.frameBytes = template.bytes;
    producers.push(new WsProducer(spec, tally, template, paced));
  }
  await Promise.all(producers.map((p) => p.connect(10_000)));
  await send({ type: "ready" });
  await go;

  const start = now();
  const deadline = start + spec.durationS * 1000;
  tally.startedAt = start;
  tally.endedAt = start;
  if (!paced) {
    for (const p of producers) {
      p.deadline = deadline;
      p.start();
    }
    await new Promise((r) => setTimeout(r, Math.max(0, deadline - now())));
  } else {
    // Frame k is due at start + k·interval, round-robin over the connections. Latency is measured from
    // that due time, so a stalled server is charged for every frame it kept us from sending.
    const interval = (1000 * spec.eventsPerFrame) / spec.rate;
    let k = 0;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const t = now();
        for (let due = start + k * interval; due <= t && due < deadline; due = start + ++k * interval) {
          producers[k % producers.length].enqueue(due);
        }
        const next = start + k * interval;
        if (next >= deadline) return resolve();
        setTimeout(tick, Math.max(0, next - now()));
      };
      tick();
    });
  }
  tally.loadEndedAt = now();
  for (const p of producers) p.abandonBacklog();
  await Promise.all(producers.map((p) => p.drain(spec.drainTimeoutS * 1000)));
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

/**
 * One request at a time for one slot, through undici's handler API (Pool.dispatch): unlike
 * `request()` it creates no response stream and no body mixin per request, so the generator spends less of
 * the shared machine's CPU; the handler object is reused for the slot's whole run.
 */
class Exchange implements Dispatcher.DispatchHandlers {
  status = 0;
  private readonly chunks: Buffer[] = [];
  private settle: ((err: Error | null) => void) | null = null;

  constructor(private readonly pool: Pool) {}

  post(options: Dispatcher.DispatchOptions): Promise<void> {
    this.status = 0;
    this.chunks.length = 0;
    return new Promise<void>((resolve, reject) => {
      this.settle = (err) => (err ? reject(err) : resolve());
      this.pool.dispatch(options, this);
    });
  }

  /** The response body as text. */
  text(): string {
    return this.chunks.length === 1 ? this.chunks[0].toString() : Buffer.concat(this.chunks).toString();
  }

  onConnect(): void {}
  onError(err: Error): void {
    this.finish(err);
  }
  onHeaders(statusCode: number): boolean {
    this.status = statusCode;
    return true;
  }
  onData(chunk: Buffer): boolean {
    this.chunks.push(chunk);
    return true;
  }
  onComplete(): void {
    this.finish(null);
  }

  private finish(err: Error | null): void {
    const settle = this.settle;
    this.settle = null;
    settle?.(err);
  }
}

async function runHttp(spec: GeneratorSpec, tally: Tally, go: Promise<void>): Promise<void> {
  const pool = new Pool(`http://127.0.0.1:${spec.port}`, {
    connections: spec.concurrency,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    headersTimeout: (spec.durationS + spec.drainTimeoutS) * 1000,
    bodyTimeout: (spec.durationS + spec.drainTimeoutS) * 1000,
  });
  const path = `/v1/streams/${encodeURIComponent(spec.stream)}/events`;
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (spec.token) headers.authorization = `Bearer ${spec.token}`;
  await send({ type: "ready" });
  await go;

  const start = now();
  const deadline = start + spec.durationS * 1000;
  tally.startedAt = start;
  tally.endedAt = start;

  const slot = async (i: number) => {
    const template = new FrameTemplate(spec.idKind, spec.eventsPerFrame);
    tally.frameBytes = template.bytes;
    const exchange = new Exchange(pool);
    // The body buffer is rewritten in place before each request: safe, one request in flight per slot.
    const options: Dispatcher.DispatchOptions = { path, method: "POST", headers, body: template.buffer };
    while (now() < deadline) {
      template.stamp();
      const sentAt = now();
      tally.framesSent++;
      tally.eventsSent += spec.eventsPerFrame;
      try {
        await exchange.post(options);
        const text = exchange.text();
        const t = now();
        const status = exchange.status;
        if (status === 200 || status === 207) {
          const answer = JSON.parse(text);
          tally.record(t, t - sentAt, answer.accepted);
          tally.acked(t);
          tally.rejected += answer.rejected;
          tally.duplicates += answer.duplicates;
          if (answer.rejected > 0) tally.fail(`rejected: ${answer.errors?.[0]?.message ?? "?"}`);
        } else {
          tally.unacked++;
          tally.fail(`HTTP ${status}: ${text.slice(0, 200)}`);
          if (status === 503 || status === 429) await new Promise((r) => setTimeout(r, 50));
        }
      } catch (err) {
        tally.unacked++;
        tally.fail(`request failed: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  await Promise.all(Array.from({ length: spec.concurrency }, (_, i) => slot(i)));
  tally.loadEndedAt = deadline;
  await pool.close();
}

// ---------------------------------------------------------------------------------------------------------

async function run(spec: GeneratorSpec, go: Promise<void>): Promise<GeneratorResult> {
  const tally = new Tally();
  tally.intervalMs = spec.intervalS * 1000;
  const cpuBefore = process.cpuUsage();
  if (spec.mode === "http") await runHttp(spec, tally, go);
  else await runWs(spec, tally, spec.mode === "paced", go);
  const cpu = process.cpuUsage(cpuBefore);
  return {
    mode: spec.mode,
    index: spec.index,
    pid: process.pid,
    startedAt: epoch(tally.startedAt),
    endedAt: epoch(tally.endedAt),
    loadEndedAt: epoch(tally.loadEndedAt),
    framesSent: tally.framesSent,
    framesAcked: tally.framesAcked,
    eventsSent: tally.eventsSent,
    accepted: tally.accepted,
    rejected: tally.rejected,
    duplicates: tally.duplicates,
    failures: tally.failures,
    failureSamples: tally.failureSamples,
    unacked: tally.unacked,
    unsent: tally.unsent,
    unexpectedCloses: tally.unexpectedCloses,
    histogram: encodeHistogram(tally.histogram),
    lateSends: tally.lateSends,
    maxSendLagMs: Math.round(tally.maxSendLagMs * 1000) / 1000,
    frameBytes: tally.frameBytes,
    cpuUserMs: cpu.user / 1000,
    cpuSystemMs: cpu.system / 1000,
    intervals: tally.intervals.map((i) => ({ accepted: i.accepted, histogram: encodeHistogram(i.histogram) })),
  };
}

function main(): void {
  if (!process.send) {
    process.stderr.write("load-generator: run by the bench orchestrator (bench/run.ts), not directly\n");
    process.exit(64);
  }
  // The orchestrator gone means nobody will collect results: stop rather than load the daemon forever.
  process.on("disconnect", () => process.exit(3));
  let releaseGo!: () => void;
  const go = new Promise<void>((r) => (releaseGo = r));
  process.on("message", (message: ToGenerator) => {
    if (message.type === "go") return releaseGo();
    if (message.type !== "run") return;
    const spec = message.spec;
    // Hard stop well past anything a healthy run needs.
    setTimeout(() => process.exit(4), (spec.durationS + spec.drainTimeoutS + 60) * 1000).unref();
    run(spec, go).then(
      async (result) => {
        await send({ type: "result", result });
        process.exit(0);
      },
      async (err: Error) => {
        await send({ type: "failed", message: err.stack ?? err.message });
        process.exit(1);
      },
    );
  });
}

main();

/**
 * One load phase against the running daemon: fork the generator processes, start them together, collect
 * and merge their results, then verify the rows the phase added to PostgreSQL against the events acknowledged
 * as accepted (the table is never emptied: bench/row-count.ts).
 */
import { fork, type ChildProcess } from "node:child_process";
import path from "node:path";
import type { BenchDb } from "./bench-db";
import { dbDelta, markDb, type DbDelta } from "./db-counters";
import { counterDeltas, scrapeMetrics, type DaemonCounters } from "./daemon-metrics";
import type { IdKind } from "./event-factory";
import { BENCH_STREAM, benchStream } from "./event-table";
import type { FromGenerator, GeneratorResult, GeneratorSpec, LoadMode, ToGenerator } from "./generator-protocol";
import { mergeHistograms, summarize, type LatencySummary } from "./latency-histogram";
import { meterIntervals, type IntervalSample } from "./interval-meter";
import { CpuMeter, type CpuShare, type RssSampler } from "./proc-stats";
import { countRows } from "./row-count";
import { pollVacuum } from "./vacuum-poll";
import { qualifiedName } from "../src/shared/sql-identifiers";

export interface PhaseSpec {
  /** Label in the report. */
  name: string;
  mode: LoadMode;
  idKind: IdKind;
  durationS: number;
  drainTimeoutS: number;
  generators: number;
  /** ws / paced: connections over all generators. */
  connections: number;
  /** ws / paced: frames in flight per connection at most (0: the daemon's window). */
  inFlight: number;
  /** Seconds per interval of a per-interval breakdown (0: none). */
  intervalS: number;
  /** http: requests in flight over all generators. */
  concurrency: number;
  /** paced: events/s over all generators. */
  rate: number;
  eventsPerFrame: number;
  /** ws / paced: each connection a producer session of its own. */
  producerSessions?: boolean;
}

/** Per-stage daemon latency (GET /v1/latency, last interval while loaded), ms. */
export type StageLatency = Record<string, { count: number; p50_ms: number; p95_ms: number; p99_ms: number; max_ms: number }>;

/** One interval of a phase (the soak's minutes), by ack time from the first send. */
export interface IntervalResult {
  from_s: number;
  events_per_s: number;
  p50_ms: number;
  p99_ms: number;
  /** CPU per accepted event of the interval (bench/interval-meter.ts); null where not measured. */
  daemon_us_per_event: number | null;
  postgres_us_per_event: number | null;
  wal_bytes_per_event: number | null;
  /** Checkpoints started in the interval; null where not known. */
  checkpoints: number | null;
  /** Seconds of the interval in which a vacuum of the events table ran; null where not known. */
  vacuum_s: number | null;
  /** The daemon's id-state filters at the interval's end: MiB held, how many (each id is checked against all), how many folded. */
  filter_mib: number | null;
  filters_held: number | null;
  filters_folded: number | null;
}

export interface PhaseResult {
  name: string;
  mode: LoadMode;
  id_kind: IdKind;
  /** Frames in flight per connection at most (ws / paced; 0: the daemon's window). */
  in_flight: number;
  generators: number;
  connections: number;
  concurrency: number;
  offered_events_per_s: number | null;
  /** First send to last ack over all generators. */
  seconds: number;
  events_per_s: number;
  /** events_per_s over the 2-stream COPY ceiling of the same run (set by the orchestrator). */
  to_ceiling_2: number | null;
  frames_acked: number;
  events_sent: number;
  accepted: number;
  rejected: number;
  duplicates: number;
  failures: number;
  failure_samples: string[];
  unacked_frames: number;
  /** paced: frames due but never sent because the window stayed full (recorded with their wait so far). */
  unsent_frames: number;
  unexpected_closes: string[];
  ack_latency: LatencySummary;
  late_sends: number;
  max_send_lag_ms: number;
  frame_bytes: number;
  /** Rows the phase added to the table (count after − count before). */
  rows_in_db: number;
  /** Full intervals only (acks during the drain after the load stopped are left out); empty without a breakdown. */
  intervals: IntervalResult[];
  verified: boolean;
  /**
   * OK: rows == events acknowledged as accepted. OK+: more rows, all explained by frames sent but never
   * acknowledged (not acked does not mean not stored). MISMATCH: anything else (lost or doubled rows).
   */
  verdict: "OK" | "OK+" | "MISMATCH";
  verify_note: string;
  peak_rss_mib: number;
  cpu: CpuShare & { generators_cores: number };
  daemon_stages: StageLatency | null;
  daemon_counters: DaemonCounters;
  /**
   * CPU time per accepted event (µs), and the rate the measured processes would reach on `cores` idle cores
   * at that cost: robust to other load on a shared machine, where events/s is not.
   */
  cpu_us_per_event: { daemon: number | null; postgres: number | null; generators: number; capacity_events_per_s: number | null };
  /** PostgreSQL over the phase: write transactions (≈ group-commit batches) and WAL. */
  db: DbDelta | null;
  /** Seconds of the phase in which a vacuum of the events table ran (bench/vacuum-poll.ts); null: not known. */
  vacuum_s: number | null;
}

export interface PhaseContext {
  port: number;
  daemonPid: number;
  db: BenchDb;
  schema: string;
  rss: RssSampler;
  cores: number;
  /** The bench's API key, or null when the daemon runs open. */
  token: string | null;
  /** Live children, killed by the orchestrator on error or signal. */
  children: Set<ChildProcess>;
  log: (line: string) => void;
}

const GENERATOR = path.join(__dirname, "load-generator.js");

/** Splits `total` over `n` parts as evenly as integers allow. */
function split(total: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => Math.floor(total / n) + (i < total % n ? 1 : 0));
}

class Generator {
  readonly child: ChildProcess;
  private readonly messages: FromGenerator[] = [];
  private waiter: (() => void) | null = null;
  private exitError: Error | null = null;
  readonly exited: Promise<void>;

  constructor(children: Set<ChildProcess>) {
    // BENCH_GENERATOR_NODE_ARGS (e.g. --cpu-prof) profiles the generators themselves.
    const execArgv = (process.env.BENCH_GENERATOR_NODE_ARGS ?? "").split(/\s+/).filter(Boolean);
    this.child = fork(GENERATOR, [], { stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "json", execArgv });
    children.add(this.child);
    this.child.on("message", (m: FromGenerator) => {
      this.messages.push(m);
      this.waiter?.();
    });
    this.exited = new Promise((resolve) => {
      this.child.on("exit", (code, signal) => {
        children.delete(this.child);
        if (code !== 0) this.exitError = new Error(`load generator ${this.child.pid} exited (${code ?? signal})`);
        this.waiter?.();
        resolve();
      });
    });
  }

  /** A generator that died cannot take a message: its error ends the phase through next(), not the bench process. */
  send(message: ToGenerator): void {
    this.child.send(message, (err) => {
      if (!err) return;
      this.exitError ??= new Error(`load generator ${this.child.pid}: ${err.message}`);
      this.waiter?.();
    });
  }

  /** The next message of `type`; throws on "failed", on exit, or after `timeoutMs`. */
  async next<T extends FromGenerator["type"]>(type: T, timeoutMs: number): Promise<Extract<FromGenerator, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.shift();
      if (m) {
        if (m.type === "failed") throw new Error(`load generator ${this.child.pid} failed: ${m.message}`);
        if (m.type === type) return m as Extract<FromGenerator, { type: T }>;
        continue;
      }
      if (this.exitError) throw this.exitError;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`load generator ${this.child.pid}: no "${type}" within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = null;
          resolve();
        };
      });
    }
  }
}

/** Polls GET /v1/latency while the load runs and keeps the last loaded interval's stages for the stream. */
function pollStages(port: number): { stop(): StageLatency | null } {
  let last: StageLatency | null = null;
  let stopped = false;
  const poll = async () => {
    while (!stopped) {
      await new Promise((r) => setTimeout(r, 1000));
      if (stopped) break;
      try {
        const res = await fetch(`http://127.0.0.1:${port}/v1/latency`);
        const json: any = await res.json();
        const interval = json?.last_interval;
        if (!interval?.ack?.[BENCH_STREAM]?.count) continue;
        const stages: StageLatency = {};
        for (const [stage, byStream] of Object.entries<any>(interval)) {
          const p = byStream?.[BENCH_STREAM];
          if (p) stages[stage] = { count: p.count, p50_ms: p.p50_ms, p95_ms: p.p95_ms, p99_ms: p.p99_ms, max_ms: p.max_ms };
        }
        if (!stopped) last = stages;
      } catch {
        // the endpoint is optional for the bench: no stage breakdown then
      }
    }
  };
  void poll();
  return {
    stop() {
      stopped = true;
      return last;
    },
  };
}

/** µs of CPU per event of a process that used `cores` over `wallS` seconds, to 0.1 µs; null when unknown. */
function usPerEvent(cores: number | null | undefined, wallS: number, events: number): number | null {
  return cores == null || events === 0 ? null : Math.round(((cores * wallS) / events) * 1e7) / 10;
}

function perEvent(cpu: CpuShare, generatorCpuS: number, events: number, cores: number): PhaseResult["cpu_us_per_event"] {
  const daemon = usPerEvent(cpu.daemon_cores, cpu.wall_s, events);
  const postgres = usPerEvent(cpu.postgres_cores, cpu.wall_s, events);
  const generators = events === 0 ? 0 : Math.round((generatorCpuS / events) * 1e7) / 10;
  const total = daemon === null || postgres === null ? null : daemon + postgres + generators;
  return { daemon, postgres, generators, capacity_events_per_s: total ? Math.round((cores * 1e6) / total) : null };
}

/** The generators' intervals merged: full intervals of the load only. */
function mergeIntervals(spec: PhaseSpec, results: GeneratorResult[], samples: IntervalSample[]): IntervalResult[] {
  if (spec.intervalS <= 0) return [];
  const full = Math.floor(spec.durationS / spec.intervalS);
  const out: IntervalResult[] = [];
  for (let k = 0; k < full; k++) {
    const parts = results.map((r) => r.intervals[k]).filter((i) => i !== undefined);
    const latency = summarize(mergeHistograms(parts.map((i) => i.histogram)));
    const accepted = parts.reduce((a, i) => a + i.accepted, 0);
    const sample = samples[k];
    out.push({
      from_s: k * spec.intervalS,
      events_per_s: Math.round(accepted / spec.intervalS),
      p50_ms: latency.p50_ms,
      p99_ms: latency.p99_ms,
      daemon_us_per_event: sample === undefined ? null : usPerEvent(sample.cpu.daemon_cores, sample.cpu.wall_s, accepted),
      postgres_us_per_event: sample === undefined ? null : usPerEvent(sample.cpu.postgres_cores, sample.cpu.wall_s, accepted),
      wal_bytes_per_event: sample?.db == null || accepted === 0 ? null : Math.round(sample.db.wal_bytes / accepted),
      checkpoints: sample?.db?.checkpoints ?? null,
      vacuum_s: sample?.vacuumS ?? null,
      filter_mib: sample?.filters == null ? null : Math.round((sample.filters.bytes / 2 ** 20) * 10) / 10,
      filters_held: sample?.filters?.count ?? null,
      filters_folded: sample?.filters?.folded ?? null,
    });
  }
  return out;
}

/** Waits until the daemon reports no task in flight; false if it still has some after `timeoutMs`. */
async function waitForIdle(port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const inFlight = (await scrapeMetrics(port))?.get("ingestd_tasks_in_flight");
    if (inFlight === undefined || inFlight === 0) return inFlight === 0;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function verify(
  rows: number,
  accepted: number,
  unackedEvents: number,
  settled: boolean,
): Promise<{ verdict: PhaseResult["verdict"]; note: string }> {
  const unsettled = settled ? "" : "; the daemon still had tasks in flight when counted";
  if (rows === accepted) return { verdict: "OK", note: `rows == accepted${unsettled}` };
  if (rows > accepted && rows <= accepted + unackedEvents) {
    return {
      verdict: "OK+",
      note: `rows ${rows} = accepted ${accepted} + ${rows - accepted} of ${unackedEvents} events in unacknowledged frames${unsettled}`,
    };
  }
  const what = rows < accepted ? `${accepted - rows} acknowledged events missing` : `${rows - accepted} rows more than accepted`;
  return { verdict: "MISMATCH", note: `rows ${rows} != accepted ${accepted}: ${what}${unsettled}` };
}

export async function runLoadPhase(spec: PhaseSpec, ctx: PhaseContext): Promise<PhaseResult> {
  const parts = spec.mode === "http" ? spec.concurrency : spec.connections;
  const count = Math.max(1, Math.min(spec.generators, parts));
  const shares = split(parts, count);
  const generators: Generator[] = [];
  try {
    for (let i = 0; i < count; i++) generators.push(new Generator(ctx.children));
    generators.forEach((g, i) => {
      const gs: GeneratorSpec = {
        mode: spec.mode,
        index: i,
        port: ctx.port,
        stream: BENCH_STREAM,
        idKind: spec.idKind,
        inFlight: spec.inFlight,
        intervalS: spec.intervalS,
        eventsPerFrame: spec.eventsPerFrame,
        durationS: spec.durationS,
        drainTimeoutS: spec.drainTimeoutS,
        connections: shares[i],
        concurrency: shares[i],
        rate: (spec.rate * shares[i]) / parts,
        token: ctx.token,
        producerSessions: spec.producerSessions === true,
      };
      g.send({ type: "run", spec: gs });
    });
    await Promise.all(generators.map((g) => g.next("ready", 30_000)));
    const rowsBefore = await countRows(ctx.db, ctx.schema);

    const metricsBefore = await scrapeMetrics(ctx.port);
    const dbBefore = await markDb(ctx.db);
    ctx.rss.resetSpan();
    const meter = new CpuMeter(ctx.daemonPid, ctx.db.postmasterPid());
    const stages = pollStages(ctx.port);
    const vacuum = pollVacuum(ctx.db, qualifiedName(ctx.schema, benchStream().table));
    for (const g of generators) g.send({ type: "go" });
    const perInterval = spec.intervalS > 0 ? meterIntervals(ctx.db, ctx.daemonPid, ctx.port, ctx.cores, spec.intervalS, vacuum) : null;
    const limit = (spec.durationS + spec.drainTimeoutS + 30) * 1000;
    let results: GeneratorResult[];
    let samples: IntervalSample[] = [];
    try {
      results = (await Promise.all(generators.map((g) => g.next("result", limit)))).map((m) => m.result);
    } finally {
      stages.stop();
      vacuum.stop();
      samples = perInterval?.stop() ?? [];
    }
    const cpu = meter.read(ctx.cores);
    const dbAfter = await markDb(ctx.db);
    const counters = counterDeltas(metricsBefore, await scrapeMetrics(ctx.port), BENCH_STREAM, cpu.wall_s);
    const daemonStages = stages.stop();
    const peakRss = ctx.rss.resetSpan();
    await Promise.all(generators.map((g) => g.exited));

    const sum = (f: (r: GeneratorResult) => number) => results.reduce((a, r) => a + f(r), 0);
    const startedAt = Math.min(...results.map((r) => r.startedAt));
    const endedAt = Math.max(...results.map((r) => r.endedAt));
    const seconds = Math.max(0.001, (endedAt - startedAt) / 1000);
    const accepted = sum((r) => r.accepted);
    const generatorCpu = sum((r) => r.cpuUserMs + r.cpuSystemMs) / 1000;

    // Frames the generators gave up on may still commit: count once the daemon has nothing in flight.
    const settled = await waitForIdle(ctx.port, 15_000);
    const rows = (await countRows(ctx.db, ctx.schema)) - rowsBefore;
    const unackedEvents = sum((r) => r.unacked) * spec.eventsPerFrame;
    const { verdict, note } = await verify(rows, accepted, unackedEvents, settled);

    return {
      name: spec.name,
      mode: spec.mode,
      id_kind: spec.idKind,
      in_flight: spec.mode === "http" ? 0 : spec.inFlight,
      generators: count,
      connections: spec.mode === "http" ? 0 : spec.connections,
      concurrency: spec.mode === "http" ? spec.concurrency : 0,
      offered_events_per_s: spec.mode === "paced" ? spec.rate : null,
      seconds: Math.round(seconds * 1000) / 1000,
      events_per_s: Math.round(accepted / seconds),
      to_ceiling_2: null,
      frames_acked: sum((r) => r.framesAcked),
      events_sent: sum((r) => r.eventsSent),
      accepted,
      rejected: sum((r) => r.rejected),
      duplicates: sum((r) => r.duplicates),
      failures: sum((r) => r.failures),
      failure_samples: [...new Set(results.flatMap((r) => r.failureSamples))].slice(0, 5),
      unacked_frames: sum((r) => r.unacked),
      unsent_frames: sum((r) => r.unsent),
      unexpected_closes: results.flatMap((r) => r.unexpectedCloses).slice(0, 10),
      ack_latency: summarize(mergeHistograms(results.map((r) => r.histogram))),
      late_sends: sum((r) => r.lateSends),
      max_send_lag_ms: Math.max(...results.map((r) => r.maxSendLagMs)),
      frame_bytes: results[0]?.frameBytes ?? 0,
      rows_in_db: rows,
      intervals: mergeIntervals(spec, results, samples),
      verified: verdict !== "MISMATCH",
      verdict,
      verify_note: note,
      peak_rss_mib: Math.round((peakRss / 1024) * 10) / 10,
      cpu: { ...cpu, generators_cores: Math.round((generatorCpu / cpu.wall_s) * 100) / 100 },
      daemon_stages: daemonStages,
      daemon_counters: counters,
      cpu_us_per_event: perEvent(cpu, generatorCpu, accepted, ctx.cores),
      db: dbDelta(dbBefore, dbAfter),
      vacuum_s: vacuum.seconds(),
    };
  } finally {
    for (const g of generators) if (g.child.exitCode === null && g.child.signalCode === null) g.child.kill("SIGKILL");
  }
}

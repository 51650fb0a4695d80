/**
 * Runs the configured pull sources on their schedule (docs/sources.md): each source wakes when its
 * `next_run_at` (in PostgreSQL, shared by every daemon) is due, claims the run (source-state.ts: one daemon,
 * once per slot), runs it and records the outcome. Runs of different sources proceed side by side; a source
 * never overlaps itself. Also answers `GET /v1/sources` and runs a source on demand.
 */
import os from "node:os";
import pg from "pg";
import type { Logger } from "../ops/logger";
import type { Metrics } from "../ops/metrics";
import { everyMs, type SourceConfig } from "../ops/source-config";
import { type SourceRow, SourceState } from "../storage/source-state";
import { runSource, type SubmitRecords } from "./source-run";

/** How long a run on demand waits for another connection's hold on the source (a schedule check, a short run). */
const RUN_NOW_WAIT_MS = 3000;
/** Shortest wait between two looks at a source's schedule (and after a failure to read it). */
const MIN_WAIT_MS = 250;
const MAX_WAIT_MS = 60_000;

export interface SourceView {
  name: string;
  kind: SourceConfig["kind"];
  stream: string;
  every: string;
  state: "disabled" | "idle" | "running" | "failing";
  running_on: string | null;
  last_run_at: string | null;
  last_success_at: string | null;
  next_run_at: string | null;
  consecutive_failures: number;
  runs: number;
  records: SourceRow["last_records"];
  error: string | null;
  watermark: string | null;
}

export type RunNowResult = { status: "done"; view: SourceView } | { status: "busy" } | { status: "unknown" };

export class SourceScheduler {
  private readonly pool: pg.Pool;
  private readonly state: SourceState;
  private readonly timers = new Map<string, NodeJS.Timeout>();
  /**
   * Each source's attempt under way here, from its claim on: one at a time per source, and stop() waits for
   * them, so no claimed run is left half-recorded.
   */
  private readonly attempts = new Map<string, Promise<unknown>>();
  private readonly stopping = new AbortController();
  /** Names this daemon in `running_on`. */
  private readonly daemon = `${os.hostname()}:${process.pid}`;

  constructor(
    private readonly sources: Readonly<Record<string, SourceConfig>>,
    connectionString: string,
    schema: string,
    private readonly submit: SubmitRecords,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    // Its own connections: each source's run holds one (the source's lock) and two more read the schedules.
    this.pool = new pg.Pool({
      connectionString,
      max: 2 + Object.keys(sources).length,
      application_name: "ingestd-sources",
      connectionTimeoutMillis: 5000,
    });
    this.pool.on("error", () => undefined);
    this.state = new SourceState(this.pool, schema);
  }

  get names(): string[] {
    return Object.keys(this.sources);
  }

  async start(): Promise<void> {
    const enabled = this.names.filter((n) => this.sources[n].enabled !== false);
    await this.state.ensure(this.names);
    // Every configured source has its series from the start (alerts read them), from the shared state.
    for (const row of await this.state.rows()) if (row.name in this.sources) this.observe(row);
    for (const name of enabled) this.wake(name, 0);
    if (enabled.length > 0) this.log.info({ sources: enabled }, "pull sources scheduled");
  }

  /**
   * Stops scheduling, aborts requests under way (those runs fail and keep their watermark) and waits for
   * them; a slot claimed as the stop came is given back unrun.
   */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    await Promise.allSettled(this.attempts.values());
    await this.pool.end().catch(() => undefined);
  }

  async views(): Promise<SourceView[]> {
    const rows = new Map((await this.state.rows()).map((r) => [r.name, r]));
    return this.names.map((name) => this.view(name, rows.get(name) ?? null));
  }

  /** Runs a source now, whatever its schedule, unless it is running (here or on another daemon). */
  async runNow(name: string): Promise<RunNowResult> {
    if (!(name in this.sources)) return { status: "unknown" };
    const deadline = Date.now() + RUN_NOW_WAIT_MS;
    for (;;) {
      if (this.stopping.signal.aborted) return { status: "busy" };
      if ((await this.attempt(name, true)) === "ran") break;
      if (Date.now() >= deadline) return { status: "busy" };
      await new Promise((r) => setTimeout(r, 100));
    }
    return { status: "done", view: this.view(name, await this.state.row(name)) };
  }

  private wake(name: string, delayMs: number): void {
    if (this.stopping.signal.aborted) return;
    const timer = setTimeout(() => {
      this.timers.delete(name);
      void this.tick(name);
    }, delayMs);
    timer.unref();
    this.timers.set(name, timer);
  }

  private async tick(name: string): Promise<void> {
    if (this.stopping.signal.aborted) return;
    let wait = MIN_WAIT_MS;
    try {
      await this.attempt(name, false);
      // Stopping: the pool is closing; nothing more to schedule.
      if (this.stopping.signal.aborted) return;
      const row = await this.state.row(name);
      if (row !== null) {
        // Runs made by other daemons show here too.
        this.observe(row);
        wait = Math.max(MIN_WAIT_MS, Math.min(MAX_WAIT_MS, row.next_run_at.getTime() - Date.now()));
      }
    } catch (err) {
      if (this.stopping.signal.aborted) return;
      this.log.warn({ source: name, err: (err as Error).message }, "pull source: cannot read its schedule; trying again");
      wait = 1000;
    }
    // A little jitter, so daemons sharing a database do not all knock at the same moment.
    this.wake(name, wait + Math.floor(Math.random() * 50));
  }

  /** Claims and runs the source, unless it is not this daemon's to run now (under way here or elsewhere, or not due). */
  private async attempt(name: string, force: boolean): Promise<"ran" | "locked" | "not_due"> {
    if (this.attempts.has(name)) return "locked";
    const attempt = this.claimAndRun(name, force);
    this.attempts.set(name, attempt);
    try {
      return await attempt;
    } finally {
      this.attempts.delete(name);
    }
  }

  private async claimAndRun(name: string, force: boolean): Promise<"ran" | "locked" | "not_due"> {
    const source = this.sources[name];
    const run = await this.state.claim(name, everyMs(source.every), force, this.daemon);
    if (run === "locked" || run === "not_due") return run;
    if (this.stopping.signal.aborted) {
      // Claimed while the stop came: not run and not counted, and due again for the daemons that stay.
      await run.giveBack();
      return "not_due";
    }
    const started = Date.now();
    const result = await runSource(name, source, run.watermark, this.submit, {
      timeoutMs: source.timeoutMs ?? 10_000,
      retries: source.retries ?? 4,
      backoffMs: source.backoffMs ?? 500,
      maxBackoffMs: source.maxBackoffMs ?? 30_000,
      signal: this.stopping.signal,
      onStatus: (status) => this.metrics.sourceRequests.inc({ source: name, status }),
    });
    await run.finish(result);
    const m = this.metrics;
    m.sourceRuns.inc({ source: name, outcome: result.ok ? "success" : "failed" });
    m.sourceRecords.inc({ source: name, outcome: "accepted" }, result.records.accepted);
    m.sourceRecords.inc({ source: name, outcome: "duplicate" }, result.records.duplicates);
    m.sourceRecords.inc({ source: name, outcome: "rejected" }, result.records.rejected);
    const row = await this.state.row(name);
    if (row !== null) this.observe(row);
    const fields = { source: name, stream: source.stream, ms: Date.now() - started, ...result.records };
    if (result.ok) this.log.info(fields, "pull source run done");
    else this.log.warn({ ...fields, err: result.error }, "pull source run failed; its watermark is kept");
    return "ran";
  }

  /** The source's gauges from its shared state. */
  private observe(row: SourceRow): void {
    this.metrics.sourceConsecutiveFailures.set({ source: row.name }, row.consecutive_failures);
    if (row.last_success_at) this.metrics.sourceLastSuccess.set({ source: row.name }, row.last_success_at.getTime() / 1000);
  }

  private view(name: string, row: SourceRow | null): SourceView {
    const source = this.sources[name];
    const iso = (d: Date | null | undefined) => (d ? d.toISOString() : null);
    const failing = (row?.consecutive_failures ?? 0) > 0;
    return {
      name,
      kind: source.kind,
      stream: source.stream,
      every: source.every,
      state: source.enabled === false ? "disabled" : row?.running_since ? "running" : failing ? "failing" : "idle",
      running_on: row?.running_on ?? null,
      last_run_at: iso(row?.last_run_at),
      last_success_at: iso(row?.last_success_at),
      next_run_at: source.enabled === false ? null : iso(row?.next_run_at),
      consecutive_failures: row?.consecutive_failures ?? 0,
      runs: Number(row?.runs ?? 0),
      records: row?.last_records ?? null,
      error: row?.last_error ?? null,
      watermark: row?.watermark ?? null,
    };
  }
}

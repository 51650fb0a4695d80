/**
 * The bench report: one JSON document (written to .bench/latest.json) and its text rendering, with the
 * targets of docs/performance.md#targets checked as ratios within this run.
 */
import type { CeilingResult } from "./copy-ceiling";
import { type ScaleOutStep, scaleOutLines } from "./scale-out";
import type { PhaseResult } from "./load-phase";
import type { BenchOptions } from "./options";

export interface MachineInfo {
  cpu_model: string;
  cores: number;
  available_parallelism: number;
  memory_gib: number;
  os: string;
  node: string;
  loadavg_at_start: number[];
  loadavg_at_end?: number[];
}

export interface DaemonInfo {
  /** "configured" (the main phases) or "deduplication off" (ws-dedup-off). */
  label: string;
  workers: number | null;
  batch_size: number | null;
  batch_timeout_ms: number | null;
  max_batch_memory_mb: number | null;
  ring_mb: number | null;
  ws_window: number | null;
  /** Whether the daemon deduplicated the bench stream by event_id. */
  dedup: boolean | null;
  /** WebSocket phases ran as producer sessions. */
  producer_sessions?: boolean;
  auth: string;
  env: Record<string, string>;
  node_args: string[];
  /** Sampled every 100 ms over the whole run, and the kernel's own peak (VmHWM) at the end. */
  peak_rss_mib: number;
  vm_hwm_mib: number;
  warnings: number;
  exit: string;
}

export interface Target {
  name: string;
  value: number | null;
  limit: number;
  /** "min": value ≥ limit passes; "max": value < limit passes; "atMost": value ≤ limit passes. */
  kind: "min" | "max" | "atMost";
  unit: string;
  pass: boolean | null;
  /** Why there is no value, or how it was derived. */
  note?: string;
}

export interface BenchReport {
  started_at: string;
  finished_at: string;
  total_seconds: number;
  machine: MachineInfo;
  postgres: { version: string; embedded: boolean; settings: Record<string, string> };
  /** The configured daemon (main phases); `daemons` also holds the one with deduplication off. */
  daemon: DaemonInfo | null;
  daemons: DaemonInfo[];
  options: BenchOptions;
  id_kind: string;
  /** Ids the id state held after the pre-fill and at the end (null: the stream does not deduplicate). */
  id_state: { at_start: number | null; at_end: number | null };
  /** Rows of the bench table at the end, and the sum of what the ceiling, warm-ups and phases added. */
  table_rows: { at_end: number; expected: number };
  event_bytes_avg: number | null;
  copy_ceiling: CeilingResult | null;
  warmups: { daemon: string; events_per_s: number; rows: number; verified: boolean }[];
  phases: PhaseResult[];
  ws_to_copy_ceiling_2: number | null;
  /** The same ratio from CPU cost per event / row rather than measured rates (robust to a busy machine). */
  capacity_ratio: { ws: number; copy: number; ratio: number } | null;
  /** Path of the soak's SVG chart, when written. */
  soak_chart: string | null;
  /** The scale-out phase (1, 2, 3 daemons behind HAProxy; bench/scale-out.ts), when it ran. */
  scale_out: { steps: ScaleOutStep[]; chart: string | null; skipped: string | null } | null;
  targets: Target[];
  verified: boolean;
  notes: string[];
}

export function ratio(a: number, b: number): number {
  return b > 0 ? Math.round((a / b) * 100) / 100 : 0;
}

function target(name: string, value: number | null | undefined, kind: Target["kind"], limit: number, unit: string, note?: string): Target {
  const v = value ?? null;
  const pass = v === null ? null : kind === "min" ? v >= limit : kind === "max" ? v < limit : v <= limit;
  return { name, value: v, limit, kind, unit, pass, ...(note ? { note } : {}) };
}

/** The soak's last full interval over its first (events/s). */
export function soakRatio(phases: readonly PhaseResult[]): number | null {
  const soak = phases.find((p) => p.name === "soak");
  if (!soak || soak.intervals.length < 2 || soak.intervals[0].events_per_s === 0) return null;
  return ratio(soak.intervals[soak.intervals.length - 1].events_per_s, soak.intervals[0].events_per_s);
}

/**
 * PostgreSQL CPU per event that deduplication adds: the WebSocket phase on the configured (deduplicating)
 * daemon minus the same phase on the daemon with deduplication off.
 */
export function dedupPostgresUs(phases: readonly PhaseResult[], daemon: DaemonInfo | null): number | null {
  const on = phases.find((p) => p.name === "ws")?.cpu_us_per_event.postgres;
  const off = phases.find((p) => p.name === "ws-dedup-off")?.cpu_us_per_event.postgres;
  if (on == null || off == null || daemon?.dedup !== true) return null;
  return Math.round((on - off) * 10) / 10;
}

/** The targets of docs/performance.md#targets; a phase that did not run leaves its target unchecked (null). */
export function checkTargets(report: Pick<BenchReport, "phases" | "daemon" | "daemons" | "id_state">): Target[] {
  const phase = (name: string) => report.phases.find((p) => p.name === name);
  const paced = phase("paced");
  const rss = report.daemons.length > 0 ? Math.max(...report.daemons.map((d) => Math.max(d.peak_rss_mib, d.vm_hwm_mib))) : null;
  const ids = report.id_state.at_start;
  return [
    target("WebSocket / COPY ceiling (2 streams)", phase("ws")?.to_ceiling_2, "min", 0.6, "×"),
    target("soak last / first interval (minute)", soakRatio(report.phases), "min", 0.9, "×"),
    target("WebSocket producer sessions, dedup off / ceiling", phase("ws-sessions")?.to_ceiling_2, "min", 0.7, "×"),
    target("HTTP / COPY ceiling (2 streams)", phase("http")?.to_ceiling_2, "min", 0.5, "×"),
    target("paced ack p95", paced?.ack_latency.p95_ms, "max", 20, "ms"),
    target("paced ack p99", paced?.ack_latency.p99_ms, "max", 50, "ms"),
    target(
      "dedup PostgreSQL CPU per event",
      dedupPostgresUs(report.phases, report.daemon),
      "atMost",
      3,
      "µs",
      `ws minus ws-dedup-off, window holding ${ids === null ? "?" : ids.toLocaleString("en-US")} ids`,
    ),
    target("daemon peak RSS", rss, "max", 512, "MiB"),
  ];
}

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const cores = (n: number | null) => (n === null ? "  -" : n.toFixed(2));

function pad(s: string, width: number, right = false): string {
  return right ? s.padStart(width) : s.padEnd(width);
}

function table(header: string[], rows: string[][], rightFrom = 1): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => pad(c, widths[i], i >= rightFrom))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

function phaseLabel(p: PhaseResult): string {
  if (p.mode === "http") return `${p.name} (${p.concurrency} in flight)`;
  if (p.mode === "paced") return `${p.name} (${int(p.offered_events_per_s ?? 0)}/s, ${p.connections} conns)`;
  return `${p.name} (${p.connections} conns)`;
}

export function renderReport(r: BenchReport): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`ingestd bench — ${r.started_at} (${r.total_seconds.toFixed(0)} s)`);
  out.push(
    `machine   ${m.cpu_model} × ${m.cores} cores (${m.available_parallelism} usable), ${m.memory_gib} GiB, ${m.os}, Node ${m.node}, load avg ${m.loadavg_at_start.map((x) => x.toFixed(2)).join(" ")} at start, ${(m.loadavg_at_end ?? []).map((x) => x.toFixed(2)).join(" ")} at end`,
  );
  const settings = Object.entries(r.postgres.settings)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  out.push(`postgres  ${r.postgres.version} (${r.postgres.embedded ? "embedded, temp dir" : "DATABASE_URL, fresh database"}), ${settings}`);
  for (const d of r.daemons) {
    const env = Object.entries(d.env)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    out.push(
      `daemon    (${d.label}) workers ${d.workers}, batch ${d.batch_size} rows / ${d.batch_timeout_ms} ms / ${d.max_batch_memory_mb} MiB, ring ${d.ring_mb} MiB, WS window ${d.ws_window}, dedup ${d.dedup === null ? "?" : d.dedup ? "on" : "off"}${d.producer_sessions ? ", WS as producer sessions" : ""}, auth: ${d.auth}${env ? `  [${env}]` : ""}${d.node_args.length ? `  node ${d.node_args.join(" ")}` : ""}`,
    );
  }
  const o = r.options;
  out.push(
    `load      ${o.generators} generator processes per phase, ${o.eventsPerFrame} events per frame/request${r.event_bytes_avg ? ` (~${r.event_bytes_avg} B/event JSON)` : ""}, ` +
      `${r.id_kind} ids, ${o.durationS} s per phase, soak ${o.soakS} s${o.quick ? " (--quick)" : ""}`,
  );
  const ids = (n: number | null) => (n === null ? "-" : int(n));
  out.push(
    `id state  ${ids(r.id_state.at_start)} ids remembered before the timed phases, ${ids(r.id_state.at_end)} at the end (never emptied)`,
  );
  out.push("");

  if (r.copy_ceiling) {
    const c = r.copy_ceiling;
    out.push(`COPY ceiling — same rows (${c.row_bytes_avg} B/row as COPY text), pg-copy-streams into the same table, no daemon`);
    const runs = [...c.runs, ...(c.commit_sql ? [c.commit_sql] : []), ...(c.after ? [c.after] : [])];
    out.push(
      ...table(
        [
          "",
          "rows/s",
          "MiB/s",
          "rows",
          "seconds",
          "verified",
          "pg cores",
          "busy cores",
          "pg+client µs/row",
          "capacity rows/s",
          "xacts",
          "WAL B/row",
        ],
        runs.map((run) => [
          run === c.commit_sql
            ? `  daemon's commit SQL: ${run.streams} conns, ${c.commit_sql.batch_size}-row transactions${c.commit_sql.dedup ? ", dedup id claim" : ""}`
            : run === c.after
              ? `  ${run.streams} streams again, after the daemon phases`
              : `  ${run.streams} stream${run.streams > 1 ? "s" : ""}`,
          int(run.rows_per_s),
          run.mib_per_s.toFixed(1),
          int(run.rows),
          run.seconds.toFixed(2),
          run.rows_verified === run.rows ? "OK" : `MISMATCH (${run.rows_verified})`,
          cores(run.cpu.postgres_cores),
          cores(run.cpu.machine_busy_cores),
          run.pg_us_per_row === null ? "-" : `${run.pg_us_per_row.toFixed(1)}+${run.client_us_per_row.toFixed(1)}`,
          run.capacity_rows_per_s === null ? "-" : int(run.capacity_rows_per_s),
          run.db ? int(run.db.transactions) : "-",
          run.db ? int(run.db.wal_bytes / run.rows) : "-",
        ]),
      ),
    );
    out.push(`  parse + validate + encode on one thread (a worker's CPU share, no database): ${int(c.prepare_events_per_s)} events/s`);
    if (c.after && c.basis) out.push(`  "× ceiling" below: against the mean of the two 2-stream runs, ${int(c.basis.rows_per_s)} rows/s`);
    out.push("");
  }

  for (const w of r.warmups)
    out.push(
      `warm-up   ${int(w.events_per_s)} events/s over WebSocket, daemon ${w.daemon} (not measured), rows ${w.verified ? "OK" : "MISMATCH"}`,
    );
  if (r.phases.length > 0) {
    out.push("daemon phases — events/s = accepted events / (first send → last ack); latency = send (paced: intended send) → ack");
    out.push(
      ...table(
        [
          "",
          "events/s",
          "× ceiling",
          "p50 ms",
          "p95 ms",
          "p99 ms",
          "max ms",
          "accepted",
          "rows added",
          "verify",
          "RSS MiB",
          "daemon (main)",
          "pg",
          "gens",
          "busy",
        ],
        r.phases.map((p) => [
          `  ${phaseLabel(p)}`,
          int(p.events_per_s),
          p.to_ceiling_2 === null ? "-" : p.to_ceiling_2.toFixed(2),
          ms(p.ack_latency.p50_ms),
          ms(p.ack_latency.p95_ms),
          ms(p.ack_latency.p99_ms),
          ms(p.ack_latency.max_ms),
          int(p.accepted),
          int(p.rows_in_db),
          p.verdict,
          p.peak_rss_mib.toFixed(0),
          `${cores(p.cpu.daemon_cores)} (${cores(p.cpu.daemon_main_cores)})`,
          cores(p.cpu.postgres_cores),
          cores(p.cpu.generators_cores),
          cores(p.cpu.machine_busy_cores),
        ]),
      ),
    );
    out.push(
      "  (daemon / pg / gens / busy: CPU cores used by the daemon (its main thread), PostgreSQL, the load generators, the whole machine)",
    );
    out.push("");
    out.push(
      `CPU per accepted event, µs (robust to other load on the machine) and the rate it allows on ${r.machine.available_parallelism} idle cores`,
    );
    const us = (n: number | null) => (n === null ? "-" : n.toFixed(1));
    out.push(
      ...table(
        ["", "daemon", "postgres", "generators", "total", "capacity events/s"],
        r.phases.map((p) => {
          const c = p.cpu_us_per_event;
          const total = c.daemon === null || c.postgres === null ? null : c.daemon + c.postgres + c.generators;
          return [
            `  ${p.name}`,
            us(c.daemon),
            us(c.postgres),
            us(c.generators),
            us(total),
            c.capacity_events_per_s === null ? "-" : int(c.capacity_events_per_s),
          ];
        }),
      ),
    );
    for (const p of r.phases) {
      const issues: string[] = [];
      if (p.verdict !== "OK") issues.push(p.verify_note);
      if (p.rejected > 0) issues.push(`${int(p.rejected)} rejected`);
      if (p.duplicates > 0) issues.push(`${int(p.duplicates)} duplicates`);
      if (p.failures > 0) issues.push(`${int(p.failures)} failures: ${p.failure_samples.join(" | ")}`);
      if (p.unacked_frames > 0) issues.push(`${int(p.unacked_frames)} frames/requests never acknowledged`);
      if (p.unsent_frames > 0)
        issues.push(`${int(p.unsent_frames)} frames due but never sent (window full at the deadline; recorded with their wait so far)`);
      if (p.unexpected_closes.length > 0) issues.push(`closed by the daemon: ${p.unexpected_closes.join(", ")}`);
      if (p.mode === "paced" && p.late_sends > 0)
        issues.push(`${int(p.late_sends)} frames sent late (window full), worst ${ms(p.max_send_lag_ms)} ms`);
      if (issues.length > 0) out.push(`  ! ${p.name}: ${issues.join("; ")}`);
    }
    out.push("");
    const staged = r.phases;
    if (staged.length > 0 || r.phases.some((p) => p.db)) {
      out.push("where the time goes: daemon stages (GET /v1/latency, last 1 s under load) p50 / p99 ms; over the phase:");
      out.push("  busy workers (event-loop utilisation summed, /metrics), mean COPY+commit per batch (request-weighted),");
      out.push(
        "  PostgreSQL write transactions (≈ group-commit batches), accepted rows per transaction, WAL bytes per row, seconds a vacuum of the table ran",
      );
      const stageNames = ["receive", "validate", "commit", "ack"];
      out.push(
        ...table(
          ["", ...stageNames, "busy workers", "COPY+commit ms", "xacts", "rows/xact", "WAL B/row", "vacuum s"],
          staged.map((p) => [
            `  ${p.name}`,
            ...stageNames.map((s) => {
              const v = p.daemon_stages?.[s];
              return v ? `${ms(v.p50_ms)} / ${ms(v.p99_ms)}` : "-";
            }),
            p.daemon_counters.worker_busy_threads === null ? "-" : p.daemon_counters.worker_busy_threads.toFixed(2),
            p.daemon_counters.commit_ms_mean === null ? "-" : ms(p.daemon_counters.commit_ms_mean),
            p.db ? int(p.db.transactions) : "-",
            p.db && p.db.transactions > 0 ? int(p.accepted / p.db.transactions) : "-",
            p.db && p.accepted > 0 ? int(p.db.wal_bytes / p.accepted) : "-",
            p.vacuum_s == null ? "-" : String(Math.round(p.vacuum_s)),
          ]),
        ),
      );
      out.push("");
    }
  }

  const soak = r.phases.find((p) => p.name === "soak");
  if (soak && soak.intervals.length > 0) {
    out.push(
      `soak — per ${soak.intervals.length > 1 ? soak.intervals[1].from_s - soak.intervals[0].from_s : soak.seconds} s over WebSocket (by ack time; acks after the load stopped left out)`,
    );
    out.push(
      ...table(
        [
          "",
          "events/s",
          "× ceiling",
          "p50 ms",
          "p99 ms",
          "daemon µs/event",
          "pg µs/event",
          "WAL B/event",
          "ckpts",
          "vacuum s",
          "filters: MiB, count (folded)",
        ],
        soak.intervals.map((i) => [
          `  from ${i.from_s} s`,
          int(i.events_per_s),
          soak.to_ceiling_2 === null || !soak.events_per_s ? "-" : ((soak.to_ceiling_2 * i.events_per_s) / soak.events_per_s).toFixed(2),
          ms(i.p50_ms),
          ms(i.p99_ms),
          i.daemon_us_per_event?.toFixed(1) ?? "-",
          i.postgres_us_per_event?.toFixed(1) ?? "-",
          i.wal_bytes_per_event == null ? "-" : int(i.wal_bytes_per_event),
          i.checkpoints == null ? "-" : String(i.checkpoints),
          i.vacuum_s == null ? "-" : String(Math.round(i.vacuum_s)),
          i.filter_mib == null ? "-" : `${i.filter_mib.toFixed(1)}, ${i.filters_held ?? "-"} (${i.filters_folded})`,
        ]),
      ),
    );
    const sr = soakRatio(r.phases);
    out.push(`  last / first: ${sr === null ? "-" : sr.toFixed(2)}${r.soak_chart ? `; chart ${r.soak_chart}` : ""}`);
    out.push("");
  }
  if (r.ws_to_copy_ceiling_2 !== null) out.push(`WebSocket / COPY ceiling (2 streams): ${r.ws_to_copy_ceiling_2.toFixed(2)}`);
  if (r.capacity_ratio !== null) {
    out.push(
      `at measured CPU cost on ${r.machine.available_parallelism} idle cores: WebSocket ${int(r.capacity_ratio.ws)} events/s vs COPY (2 streams) ${int(r.capacity_ratio.copy)} rows/s = ${r.capacity_ratio.ratio.toFixed(2)} (robust to other load)`,
    );
  }
  for (const d of r.daemons) {
    out.push(
      `daemon (${d.label}) peak RSS: ${d.peak_rss_mib.toFixed(0)} MiB sampled, ${d.vm_hwm_mib.toFixed(0)} MiB VmHWM; exit ${d.exit}; ${d.warnings} warning/error log lines`,
    );
  }
  if (r.scale_out) {
    out.push("");
    if (r.scale_out.skipped) out.push(`scale-out: not run (${r.scale_out.skipped})`);
    else {
      out.push("scale-out (WebSocket through HAProxy, deduplication off, WORKERS=1 per daemon; docs/performance.md#scale-out)");
      out.push(...scaleOutLines(r.scale_out.steps).map((l) => `  ${l}`));
    }
  }
  out.push("");
  out.push("targets (docs/performance.md, ratios within this run; 2 cores, generators on the same machine)");
  out.push(
    ...table(
      ["", "value", "target", "", ""],
      r.targets.map((t) => [
        `  ${t.name}`,
        t.value === null ? "-" : t.unit === "×" ? t.value.toFixed(2) : t.unit === "µs" ? t.value.toFixed(1) : ms(t.value),
        `${t.kind === "min" ? "≥" : t.kind === "max" ? "<" : "≤"} ${t.limit} ${t.unit === "×" ? "" : t.unit}`.trimEnd(),
        t.pass === null ? "not run" : t.pass ? "PASS" : "MISS",
        t.note ?? "",
      ]),
      1,
    ),
  );
  out.push("");
  for (const n of r.notes) out.push(`note: ${n}`);
  const plus = r.phases.some((p) => p.verdict === "OK+");
  out.push(
    `verification: ${r.verified ? `OK (rows in PostgreSQL == events acknowledged as accepted, every phase${plus ? "; OK+: plus rows of frames never acknowledged" : ""})` : "MISMATCH"}`,
  );
  return out.join("\n") + "\n";
}

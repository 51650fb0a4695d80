/**
 * `npm run bench` / `ingestd bench`: the benchmark of docs/performance.md.
 *
 *   PostgreSQL (embedded in a temp dir, or DATABASE_URL) with a fresh database, stock settings
 *   → the id state pre-filled with 20M ids (untimed)
 *   → COPY ceiling, 1 and 2 streams, no daemon, same events and ids
 *   → the real daemon as a child process, loaded by separate generator processes: first one with
 *     deduplication off (WebSocket), then the configured one: WebSocket full speed, HTTP full speed,
 *     WebSocket paced (ack latency, coordinated-omission aware), the soak (per interval)
 *   → rows verified per phase (the table is never emptied: rows added = events accepted), peak RSS,
 *     report (text + .bench/latest.json + the soak's SVG chart)
 *
 * Everything it starts it stops: bounded phases, children killed on error, signal or timeout.
 */
import type { ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { configPath, dedupStreams, type IngestdConfig } from "../src/ops/config";
import { loadCheckedConfig } from "../src/security/checked-config";
import { EmbeddedDbError, EX_UNAVAILABLE } from "../src/storage/embedded-db";
import { startBenchDb, type BenchDb } from "./bench-db";
import { measureCeilingAgain, measureCopyCeiling, type CeilingResult } from "./copy-ceiling";
import { ROOT, startDaemon, unitNodeArgs, type DaemonProcess } from "./daemon-process";
import { dedupTable, qualifiedName } from "../src/shared/sql-identifiers";
import { eventJson, VARIANTS, type IdKind } from "./event-factory";
import { BENCH_STREAM, benchStream, createSchema } from "./event-table";
import { prefillIdState } from "./id-state-prefill";
import { runLoadPhase, type PhaseContext, type PhaseResult, type PhaseSpec } from "./load-phase";
import { DEFAULT_OPTIONS, optionsFromEnv, USAGE, type BenchOptions, type PhaseName } from "./options";
import { RssSampler } from "./proc-stats";
import { checkTargets, ratio, renderReport, type BenchReport, type DaemonInfo, type MachineInfo } from "./report";
import { checkpoint, countRows } from "./row-count";
import { haproxyAvailable, runScaleOut, scaleOutSvg } from "./scale-out";
import { soakChartSvg } from "./soak-chart";

export { DEFAULT_OPTIONS, optionsFromEnv, type BenchOptions } from "./options";
export type { BenchReport } from "./report";

export const DEFAULT_JSON_PATH = path.join(ROOT, ".bench/latest.json");

function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpu_model: cpus[0]?.model.trim() ?? "unknown",
    cores: cpus.length,
    available_parallelism: os.availableParallelism(),
    memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** The daemon's effective settings: the same loader it uses, on the environment it gets. */
function daemonConfig(env: Record<string, string>, databaseUrl: string): IngestdConfig | null {
  try {
    return loadCheckedConfig({ ...process.env, ...env, DATABASE_URL: databaseUrl, PORT: "0" });
  } catch {
    return null;
  }
}

/** Mean JSON size of the bench's events. */
function averageEventBytes(kind: IdKind): number {
  let bytes = 0;
  for (let i = 0; i < VARIANTS; i++) bytes += Buffer.byteLength(eventJson(kind, i));
  return Math.round(bytes / VARIANTS);
}

/**
 * A copy of the daemon's configuration file with deduplication of the bench stream forced on or off, in a
 * temporary file (removed at cleanup): the setting has no environment override.
 */
function dedupConfigFile(env: Record<string, string>, on: boolean): string {
  const source = configPath({ ...process.env, ...env });
  const config = JSON.parse(fs.readFileSync(source, "utf8"));
  config.deduplicate = { ...(config.deduplicate ?? {}), [BENCH_STREAM]: on };
  const file = path.join(os.tmpdir(), `ingestd-bench-config-${process.pid}.json`);
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** Whether the daemon deduplicates the bench stream, decided as the daemon decides it. */
function streamDedups(config: IngestdConfig | null): boolean {
  const stream = benchStream();
  if (config === null) return stream.dedupKey !== undefined && (stream.dedupByDefault ?? false);
  return dedupStreams(config, [stream]).includes(BENCH_STREAM);
}

/** Which daemon a phase runs on: the configured one, or a second one with deduplication off. */
const DEDUP_OFF_PHASES: readonly PhaseName[] = ["ws-dedup-off", "ws-sessions"];

function phaseSpec(name: PhaseName, o: BenchOptions): PhaseSpec {
  const base = {
    durationS: o.durationS,
    drainTimeoutS: o.drainTimeoutS,
    generators: o.generators,
    eventsPerFrame: o.eventsPerFrame,
    idKind: o.idKind,
    intervalS: 0,
    inFlight: o.wsInFlight,
    producerSessions: o.producerSessions,
  };
  switch (name) {
    case "ws":
    case "ws-dedup-off":
      return { ...base, name, mode: "ws", connections: o.wsConnections, concurrency: 0, rate: 0 };
    case "ws-sessions":
      return { ...base, name, mode: "ws", connections: o.wsConnections, concurrency: 0, rate: 0, producerSessions: true };
    case "soak":
      return {
        ...base,
        name,
        mode: "ws",
        connections: o.wsConnections,
        concurrency: 0,
        rate: 0,
        durationS: o.soakS,
        intervalS: o.soakIntervalS,
      };
    case "http":
      return { ...base, name, mode: "http", connections: 0, concurrency: o.httpConcurrency, rate: 0, inFlight: 0 };
    case "paced":
      return { ...base, name, mode: "paced", connections: o.pacedConnections, concurrency: 0, rate: o.pacedRate, inFlight: 0 };
    default:
      throw new Error(`not a load phase: ${name}`);
  }
}

/** PostgreSQL's checkpoint and memory settings as the run found them (the bench changes none). */
async function postgresSettings(db: BenchDb): Promise<Record<string, string>> {
  const names = ["max_wal_size", "checkpoint_timeout", "shared_buffers", "synchronous_commit", "fsync"];
  const r = await db.query<{ name: string; setting: string }>(
    "SELECT name, current_setting(name) AS setting FROM pg_settings WHERE name = ANY($1)",
    [names],
  );
  return Object.fromEntries(r.rows.map((row) => [row.name, row.setting]));
}

async function idStateSize(db: BenchDb, schema: string): Promise<number | null> {
  const stream = benchStream();
  if (stream.dedupKey === undefined) return null;
  const r = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${qualifiedName(schema, dedupTable(stream.table))}`);
  return Number(r.rows[0].n);
}

/**
 * `ingestd bench [flags]` (src/commands/bench.ts runs this file with them): options from the environment and `argv`;
 * resolves to the exit status: 0 ran and verified, 1 verification failed or the bench could not run,
 * 64 bad flags.
 */
export function runBench(argv: string[]): Promise<number>;
/**
 * Runs the bench and returns its report (also printed to `out` and written as JSON). Rejects if the bench
 * itself could not run; a daemon that misses targets or fails verification is reported, not thrown.
 */
export function runBench(options?: Partial<BenchOptions>, out?: NodeJS.WritableStream): Promise<BenchReport>;
export function runBench(
  arg: string[] | Partial<BenchOptions> = {},
  out: NodeJS.WritableStream = process.stdout,
): Promise<number | BenchReport> {
  return Array.isArray(arg) ? runFromArgv(arg) : runWithOptions({ ...DEFAULT_OPTIONS, ...arg }, out);
}

async function runFromArgv(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(USAGE);
    return 0;
  }
  let options: BenchOptions;
  try {
    options = optionsFromEnv(process.env, argv, DEFAULT_JSON_PATH);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    return 64;
  }
  try {
    const report = await runWithOptions(options, process.stdout);
    return report.verified ? 0 : 1;
  } catch (err) {
    if (err instanceof EmbeddedDbError) {
      process.stderr.write(`bench failed: ${err.message}\n`);
      return EX_UNAVAILABLE;
    }
    process.stderr.write(`bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}

async function runWithOptions(options: BenchOptions, out: NodeJS.WritableStream): Promise<BenchReport> {
  const t0 = Date.now();
  const log = (line: string) => {
    if (options.verbose) process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${line}\n`);
  };
  const startedAt = new Date().toISOString();
  const machine = machineInfo();
  const cores = machine.available_parallelism;
  const children = new Set<ChildProcess>();
  let db: BenchDb | null = null;
  let daemon: DaemonProcess | null = null;
  let rss: RssSampler | null = null;
  let configFile: string | null = null;

  // Whatever happens, nothing started here outlives the run.
  let cleaning: Promise<void> | null = null;
  const cleanup = () =>
    (cleaning ??= (async () => {
      rss?.stop();
      for (const c of children) c.kill("SIGKILL");
      if (daemon) await daemon.stop(5000).catch(() => undefined);
      if (db) await db.close().catch(() => undefined);
      if (configFile) fs.rmSync(configFile, { force: true });
    })());
  const killOnExit = () => {
    for (const c of children) c.kill("SIGKILL");
    daemon?.child.kill("SIGKILL");
  };
  const onSignal = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping everything`);
    void cleanup().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  };
  process.on("exit", killOnExit);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const loadPhases = options.phases.filter((p) => p !== "copy" && p !== "scale-out");
  const scaleOut = options.phases.includes("scale-out");
  const groups = [
    { label: "deduplication off", dedup: "off" as const, phases: loadPhases.filter((p) => DEDUP_OFF_PHASES.includes(p)) },
    { label: "configured", dedup: options.dedup, phases: loadPhases.filter((p) => !DEDUP_OFF_PHASES.includes(p)) },
  ].filter((g) => g.phases.length > 0);
  const phaseBudgetS = (p: PhaseName) => (p === "soak" ? options.soakS : options.durationS) + options.drainTimeoutS + 90;
  const budgetS =
    300 +
    (options.prefillIds / 1e6) * 90 +
    groups.length * (options.warmupS + 90) +
    loadPhases.reduce((a, p) => a + phaseBudgetS(p), 0) +
    (scaleOut ? 3 * (options.durationS + options.drainTimeoutS + 120) : 0);
  const hardTimeout = setTimeout(() => {
    process.stderr.write(`[bench] still running after ${Math.round(budgetS)} s: giving up\n`);
    void cleanup().finally(() => process.exit(1));
  }, budgetS * 1000);
  hardTimeout.unref();

  try {
    log(`machine: ${machine.cpu_model} × ${machine.cores}, Node ${machine.node}, load average ${machine.loadavg_at_start.join(" ")}`);
    log(
      `daemon node flags: ${[...unitNodeArgs(), ...options.daemonNodeArgs].join(" ") || "none"} (systemd/ingestd.service's, then BENCH_DAEMON_NODE_ARGS)`,
    );
    db = await startBenchDb(log);
    let config = daemonConfig(options.daemonEnv, db.url);
    const schema = config?.dbSchema ?? "public";
    await createSchema(db.url, schema);
    const pgSettings = await postgresSettings(db);
    log(
      `PostgreSQL ${db.version}: ${Object.entries(pgSettings)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")}`,
    );

    // The id state starts as weeks of traffic leave it, outside the timed phases (docs/performance.md#workload).
    // A kept database (BENCH_DATABASE) only gets the ids it lacks.
    let idsAtStart = await idStateSize(db, schema);
    const missing = options.prefillIds - (idsAtStart ?? 0);
    if (benchStream().dedupKey !== undefined && missing > 0) {
      const started = Date.now();
      log(`pre-filling the id state with ${missing.toLocaleString("en-US")} ${options.idKind} ids (untimed)`);
      await prefillIdState(db.url, schema, benchStream(), missing, options.idKind);
      await checkpoint(db);
      idsAtStart = await idStateSize(db, schema);
      log(`id state holds ${idsAtStart?.toLocaleString("en-US")} ids (${((Date.now() - started) / 1000).toFixed(0)} s)`);
    }

    const dedupOn = options.dedup === "default" ? streamDedups(config) : options.dedup === "on";
    let ceiling: CeilingResult | null = null;
    if (options.phases.includes("copy")) {
      const commitSql =
        options.commitSqlRows > 0
          ? { rows: options.commitSqlRows, batchSize: config?.batchSize ?? 5000, dedup: dedupOn, streams: config?.workers ?? 2 }
          : null;
      ceiling = await measureCopyCeiling(db, schema, options.copyRows, [1, 2], cores, options.idKind, log, commitSql);
    }
    let copy2 = ceiling?.basis ?? null;

    const phases: PhaseResult[] = [];
    const warmups: NonNullable<BenchReport["warmups"]> = [];
    const daemons: DaemonInfo[] = [];
    const token = options.auth ? `igd_bench_${crypto.randomBytes(24).toString("base64url")}` : null;
    for (const group of groups) {
      const daemonEnv = { ...options.daemonEnv };
      // A key of our own, added to any the environment already lists, so the bench works (and pays for
      // authentication like a production producer) whatever keys the configuration requires.
      if (token !== null) {
        const entry = `ingestd-bench:${crypto.createHash("sha256").update(token).digest("hex")}:${BENCH_STREAM}`;
        const existing = process.env.INGESTD_API_KEYS?.trim();
        daemonEnv.INGESTD_API_KEYS = existing ? `${existing};${entry}` : entry;
      }
      if (group.dedup !== "default") {
        if (configFile) fs.rmSync(configFile, { force: true });
        configFile = dedupConfigFile(daemonEnv, group.dedup === "on");
        daemonEnv.INGESTD_CONFIG = configFile;
      }
      daemon = await startDaemon({
        databaseUrl: db.url,
        env: daemonEnv,
        nodeArgs: options.daemonNodeArgs,
        startTimeoutMs: 60_000,
        onLine: (line) => log(`daemon: ${line.slice(0, 500)}`),
      });
      children.add(daemon.child);
      const groupConfig = daemonConfig(daemonEnv, db.url) ?? config;
      if (group.dedup === "default") config = groupConfig;
      log(`daemon (${group.label}) pid ${daemon.pid} listening on 127.0.0.1:${daemon.port} (${daemon.listening.workers} workers)`);
      rss = new RssSampler(daemon.pid);
      rss.start();
      const ctx: PhaseContext = { port: daemon.port, daemonPid: daemon.pid, db, schema, rss, cores, token, children, log };

      if (options.warmupS > 0) {
        const spec = { ...phaseSpec("ws", options), name: `warm-up (${group.label})`, durationS: options.warmupS };
        log(`warm-up: WebSocket for ${options.warmupS} s`);
        const w = await runLoadPhase(spec, ctx);
        warmups.push({ daemon: group.label, events_per_s: w.events_per_s, rows: w.rows_in_db, verified: w.verified });
      }
      for (const name of group.phases) {
        const spec = phaseSpec(name, options);
        log(
          `${name}: ${spec.durationS} s, ${spec.mode === "http" ? `${spec.concurrency} requests in flight` : `${spec.connections} connections`}` +
            `${spec.mode === "paced" ? ` at ${spec.rate} events/s` : ""}${spec.intervalS > 0 ? `, reported every ${spec.intervalS} s` : ""}`,
        );
        const result = await runLoadPhase(spec, ctx);
        result.to_ceiling_2 = copy2 ? ratio(result.events_per_s, copy2.rows_per_s) : null;
        phases.push(result);
        log(
          `${name}: ${result.events_per_s.toLocaleString("en-US")} events/s${result.to_ceiling_2 === null ? "" : ` (${result.to_ceiling_2} of the ceiling)`}, ` +
            `ack p50 ${result.ack_latency.p50_ms} / p99 ${result.ack_latency.p99_ms} ms, rows ${result.verdict}${result.verdict === "OK" ? "" : ` (${result.verify_note})`}`,
        );
      }

      rss.stop();
      const hwm = rss.hwmKiB();
      const peak = rss.peakKiB;
      log(`stopping the daemon (${group.label}, SIGTERM)`);
      const exit = await daemon.stop(30_000);
      children.delete(daemon.child);
      daemons.push({
        label: group.label,
        workers: typeof daemon.listening.workers === "number" ? daemon.listening.workers : (groupConfig?.workers ?? null),
        batch_size: groupConfig?.batchSize ?? null,
        batch_timeout_ms: groupConfig?.batchTimeoutMs ?? null,
        max_batch_memory_mb: groupConfig?.maxBatchMemoryMb ?? null,
        ring_mb: typeof daemon.listening.ring_mb === "number" ? daemon.listening.ring_mb : (groupConfig?.ringMb ?? null),
        ws_window: groupConfig?.ws.window ?? null,
        dedup: groupConfig ? streamDedups(groupConfig) : null,
        producer_sessions: options.producerSessions,
        auth: options.auth ? "bench API key" : "as configured",
        env: options.daemonEnv,
        node_args: options.daemonNodeArgs,
        peak_rss_mib: Math.round((peak / 1024) * 10) / 10,
        vm_hwm_mib: Math.round((hwm / 1024) * 10) / 10,
        warnings: daemon.warnings(),
        exit: exit.killed ? "killed after 30 s (drain did not finish)" : `${exit.code ?? exit.signal}`,
      });
      daemon = null;
    }

    if (ceiling !== null && phases.length > 0) {
      await measureCeilingAgain(ceiling, db, schema, options.copyRows, cores, options.idKind, log);
      copy2 = ceiling.basis;
      for (const p of phases) p.to_ceiling_2 = ratio(p.events_per_s, ceiling.basis!.rows_per_s);
    }

    // 1, 2, 3 daemons behind HAProxy on this database (docs/performance.md#scale-out).
    let scaleOutReport: BenchReport["scale_out"] = null;
    if (scaleOut) {
      if (!haproxyAvailable()) scaleOutReport = { steps: [], chart: null, skipped: "haproxy is not installed (apt-get install haproxy)" };
      else {
        const o = { durationS: options.durationS, connections: options.wsConnections, maxDaemons: 3, workers: 1, dedup: false };
        log(`scale-out: 1 to 3 daemons behind HAProxy, ${o.durationS} s each, deduplication off, WORKERS=1`);
        scaleOutReport = { steps: await runScaleOut(db, { ...o, idKind: options.idKind, schema }, log), chart: null, skipped: null };
      }
    }

    const notes: string[] = [];
    const loadAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
    if (Math.max(machine.loadavg_at_start[0], loadAtEnd[0]) > 0.5 * cores) {
      notes.push(
        `load average ${machine.loadavg_at_start[0]} at start, ${loadAtEnd[0]} at end on ${cores} cores: other work shared the machine; ` +
          "compare ratios within this run and CPU per event, not events/s",
      );
    }
    if (options.quick)
      notes.push("--quick: short phases and a small id state; figures are for development, not comparable with a full run");
    const idsAtEnd = await idStateSize(db, schema);
    const rowsAtEnd = await countRows(db, schema);
    const rowsExpected =
      (ceiling?.runs.reduce((a, r) => a + r.rows_verified, 0) ?? 0) +
      (ceiling?.commit_sql?.rows_verified ?? 0) +
      (ceiling?.after?.rows_verified ?? 0) +
      phases.reduce((a, p) => a + p.rows_in_db, 0) +
      warmups.reduce((a, w) => a + w.rows, 0) +
      (scaleOutReport?.steps.reduce((a, st) => a + st.rows_in_db, 0) ?? 0);
    if (rowsAtEnd !== rowsExpected) {
      notes.push(
        `the table holds ${rowsAtEnd} rows at the end, the phases added ${rowsExpected}: rows landed between phases (late commits)`,
      );
    }
    const verified =
      phases.every((p) => p.verified) &&
      (scaleOutReport?.steps.every((st) => st.verified) ?? true) &&
      warmups.every((w) => w.verified) &&
      (ceiling?.runs.every((r) => r.rows_verified === r.rows) ?? true) &&
      (ceiling?.commit_sql ? ceiling.commit_sql.rows_verified === ceiling.commit_sql.rows : true) &&
      (ceiling?.after ? ceiling.after.rows_verified === ceiling.after.rows : true);
    const ws = phases.find((p) => p.name === "ws");
    const report: BenchReport = {
      started_at: startedAt,
      finished_at: new Date().toISOString(),
      total_seconds: Math.round((Date.now() - t0) / 100) / 10,
      machine: { ...machine, loadavg_at_end: loadAtEnd },
      postgres: { version: db.version, embedded: db.embedded, settings: pgSettings },
      daemon: daemons.find((d) => d.label === "configured") ?? null,
      daemons,
      options,
      id_kind: options.idKind,
      id_state: { at_start: idsAtStart, at_end: idsAtEnd },
      table_rows: { at_end: rowsAtEnd, expected: rowsExpected },
      event_bytes_avg: averageEventBytes(options.idKind),
      copy_ceiling: ceiling,
      warmups,
      phases,
      ws_to_copy_ceiling_2: ws?.to_ceiling_2 ?? null,
      capacity_ratio:
        ws?.cpu_us_per_event.capacity_events_per_s && copy2?.capacity_rows_per_s
          ? {
              ws: ws.cpu_us_per_event.capacity_events_per_s,
              copy: copy2.capacity_rows_per_s,
              ratio: ratio(ws.cpu_us_per_event.capacity_events_per_s, copy2.capacity_rows_per_s),
            }
          : null,
      soak_chart: null,
      scale_out: scaleOutReport,
      targets: [],
      verified,
      notes,
    };
    report.targets = checkTargets(report);
    await cleanup();
    report.total_seconds = Math.round((Date.now() - t0) / 100) / 10;

    out.write(renderReport(report));
    if (options.jsonPath) {
      fs.mkdirSync(path.dirname(options.jsonPath), { recursive: true });
      const soak = phases.find((p) => p.name === "soak");
      if (soak && soak.intervals.length > 0) {
        report.soak_chart = options.jsonPath.replace(/\.json$/, "") + "-soak.svg";
        fs.writeFileSync(report.soak_chart, soakChartSvg(report, soak, copy2?.rows_per_s ?? null));
        out.write(`soak chart: ${path.relative(process.cwd(), report.soak_chart) || report.soak_chart}\n`);
      }
      if (report.scale_out && report.scale_out.steps.length > 0) {
        report.scale_out.chart = options.jsonPath.replace(/\.json$/, "") + "-scale-out.svg";
        const title = `ingestd scale-out behind HAProxy, ${report.machine.cores} cores, ${report.started_at.slice(0, 16).replace("T", " ")} UTC`;
        fs.writeFileSync(report.scale_out.chart, scaleOutSvg(report.scale_out.steps, title));
        out.write(`scale-out chart: ${path.relative(process.cwd(), report.scale_out.chart) || report.scale_out.chart}\n`);
      }
      fs.writeFileSync(options.jsonPath, JSON.stringify(report, null, 2) + "\n");
      out.write(`report: ${path.relative(process.cwd(), options.jsonPath) || options.jsonPath}\n`);
    }
    return report;
  } catch (err) {
    if (daemon) {
      const tail = daemon.output.slice(-20).join("\n");
      if (tail) process.stderr.write(`[bench] last daemon output:\n${tail}\n`);
    }
    throw err;
  } finally {
    clearTimeout(hardTimeout);
    await cleanup();
    process.off("exit", killOnExit);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

if (require.main === module) {
  void runFromArgv(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}

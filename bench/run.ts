/**
 * `npm run bench` / `ingestd bench`: the benchmark of docs/performance.md.
 *
 *   PostgreSQL (embedded in a temp dir, or DATABASE_URL) with a fresh database
 *   → COPY ceiling, 1 and 2 streams, no daemon
 *   → the real daemon as a child process, loaded by separate generator processes:
 *       WebSocket full speed, HTTP full speed, WebSocket paced (ack latency, coordinated-omission aware)
 *   → rows verified per phase, peak RSS, report (text + .bench/latest.json)
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
import { measureCopyCeiling, type CeilingResult } from "./copy-ceiling";
import { ROOT, startDaemon, type DaemonProcess } from "./daemon-process";
import { eventJson, VARIANTS } from "./event-factory";
import { BENCH_STREAM, benchStream, createSchema, resetTable } from "./event-table";
import { runLoadPhase, type PhaseContext, type PhaseResult, type PhaseSpec } from "./load-phase";
import { DEFAULT_OPTIONS, optionsFromEnv, USAGE, type BenchOptions, type PhaseName } from "./options";
import { RssSampler } from "./proc-stats";
import { checkTargets, renderReport, type BenchReport, type DaemonInfo, type MachineInfo } from "./report";

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

/** Mean JSON size of the bench's events, with an id as long as the generators' ids. */
function averageEventBytes(): number {
  let bytes = 0;
  for (let i = 0; i < VARIANTS; i++) bytes += Buffer.byteLength(eventJson(`ws-${process.pid}-0-`, i));
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

function phaseSpec(name: PhaseName, o: BenchOptions): PhaseSpec {
  const base = { durationS: o.durationS, drainTimeoutS: o.drainTimeoutS, generators: o.generators, eventsPerFrame: o.eventsPerFrame };
  switch (name) {
    case "ws":
      return { ...base, name: "ws", mode: "ws", idPrefix: "ws-", connections: o.wsConnections, concurrency: 0, rate: 0 };
    case "http":
      return { ...base, name: "http", mode: "http", idPrefix: "http-", connections: 0, concurrency: o.httpConcurrency, rate: 0 };
    case "paced":
      return {
        ...base,
        name: "paced",
        mode: "paced",
        idPrefix: "paced-",
        connections: o.pacedConnections,
        concurrency: 0,
        rate: o.pacedRate,
      };
    default:
      throw new Error(`not a load phase: ${name}`);
  }
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
  const loadPhases = options.phases.filter((p) => p !== "copy");
  const budgetS = 120 + (options.warmupS + 10) + loadPhases.length * (options.durationS + options.drainTimeoutS + 40);
  const hardTimeout = setTimeout(() => {
    process.stderr.write(`[bench] still running after ${budgetS} s: giving up\n`);
    void cleanup().finally(() => process.exit(1));
  }, budgetS * 1000);
  hardTimeout.unref();

  try {
    log(`machine: ${machine.cpu_model} × ${machine.cores}, Node ${machine.node}`);
    db = await startBenchDb(log);
    let config = daemonConfig(options.daemonEnv, db.url);
    const schema = config?.dbSchema ?? "public";
    await createSchema(db.url, schema);

    const dedupOn = options.dedup === "default" ? streamDedups(config) : options.dedup === "on";
    let ceiling: CeilingResult | null = null;
    if (options.phases.includes("copy")) {
      const commitSql =
        options.commitSqlRows > 0
          ? { rows: options.commitSqlRows, batchSize: config?.batchSize ?? 5000, dedup: dedupOn, streams: config?.workers ?? 2 }
          : null;
      ceiling = await measureCopyCeiling(db, schema, options.copyRows, [1, 2], cores, log, commitSql);
    }

    const phases: PhaseResult[] = [];
    let warmup: BenchReport["warmup"] = null;
    let daemonInfo: DaemonInfo | null = null;
    if (loadPhases.length > 0) {
      await resetTable(db, schema);
      const daemonEnv = { ...options.daemonEnv };
      // A key of our own, added to any the environment already lists, so the bench works (and pays for
      // authentication like a production producer) whatever keys the configuration requires.
      const token = options.auth ? `igd_bench_${crypto.randomBytes(24).toString("base64url")}` : null;
      if (token !== null) {
        const entry = `ingestd-bench:${crypto.createHash("sha256").update(token).digest("hex")}:${BENCH_STREAM}`;
        const existing = process.env.INGESTD_API_KEYS?.trim();
        daemonEnv.INGESTD_API_KEYS = existing ? `${existing};${entry}` : entry;
      }
      if (options.dedup !== "default") {
        configFile = dedupConfigFile(daemonEnv, options.dedup === "on");
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
      config = daemonConfig(daemonEnv, db.url) ?? config;
      log(`daemon pid ${daemon.pid} listening on 127.0.0.1:${daemon.port} (${daemon.listening.workers} workers)`);
      rss = new RssSampler(daemon.pid);
      rss.start();
      const ctx: PhaseContext = { port: daemon.port, daemonPid: daemon.pid, db, schema, rss, cores, token, children, log };

      if (options.warmupS > 0) {
        const spec = { ...phaseSpec("ws", options), name: "warm-up", idPrefix: "warm-", durationS: options.warmupS };
        log(`warm-up: WebSocket for ${options.warmupS} s`);
        const w = await runLoadPhase(spec, ctx);
        warmup = { events_per_s: w.events_per_s, verified: w.verified };
        await resetTable(db, schema);
      }
      for (const name of loadPhases) {
        const spec = phaseSpec(name, options);
        log(
          `${name}: ${spec.durationS} s, ${name === "http" ? `${spec.concurrency} requests in flight` : `${spec.connections} connections`}${name === "paced" ? ` at ${spec.rate} events/s` : ""}`,
        );
        const result = await runLoadPhase(spec, ctx);
        phases.push(result);
        log(
          `${name}: ${result.events_per_s.toLocaleString("en-US")} events/s, ack p50 ${result.ack_latency.p50_ms} / p99 ${result.ack_latency.p99_ms} ms, ` +
            `rows ${result.verdict}${result.verdict === "OK" ? "" : ` (${result.verify_note})`}`,
        );
        await resetTable(db, schema);
      }

      rss.stop();
      const hwm = rss.hwmKiB();
      const peak = rss.peakKiB;
      log("stopping the daemon (SIGTERM)");
      const exit = await daemon.stop(30_000);
      children.delete(daemon.child);
      daemonInfo = {
        workers: typeof daemon.listening.workers === "number" ? daemon.listening.workers : (config?.workers ?? null),
        batch_size: config?.batchSize ?? null,
        batch_timeout_ms: config?.batchTimeoutMs ?? null,
        max_batch_memory_mb: config?.maxBatchMemoryMb ?? null,
        ring_mb: typeof daemon.listening.ring_mb === "number" ? daemon.listening.ring_mb : (config?.ringMb ?? null),
        ws_window: config?.ws.window ?? null,
        dedup: config ? streamDedups(config) : null,
        auth: options.auth ? "bench API key" : "as configured",
        env: options.daemonEnv,
        node_args: options.daemonNodeArgs,
        peak_rss_mib: Math.round((peak / 1024) * 10) / 10,
        vm_hwm_mib: Math.round((hwm / 1024) * 10) / 10,
        warnings: daemon.warnings(),
        exit: exit.killed ? "killed after 30 s (drain did not finish)" : `${exit.code ?? exit.signal}`,
      };
      daemon = null;
    }

    const ws = phases.find((p) => p.mode === "ws");
    const copy2 = ceiling?.runs.find((r) => r.streams === 2);
    const ratio = ws && copy2 ? Math.round((ws.events_per_s / copy2.rows_per_s) * 100) / 100 : null;
    const notes: string[] = [];
    if (machine.loadavg_at_start[0] > 0.5 * cores) {
      notes.push(
        `load average ${machine.loadavg_at_start[0]} at start on ${cores} cores: the machine was busy; compare ratios within this run`,
      );
    }
    const verified =
      phases.every((p) => p.verified) && (warmup?.verified ?? true) && (ceiling?.runs.every((r) => r.rows_verified === r.rows) ?? true);
    const report: BenchReport = {
      started_at: startedAt,
      finished_at: new Date().toISOString(),
      total_seconds: Math.round((Date.now() - t0) / 100) / 10,
      machine,
      postgres: { version: db.version, embedded: db.embedded },
      daemon: daemonInfo,
      options,
      event_bytes_avg: averageEventBytes(),
      copy_ceiling: ceiling,
      warmup,
      phases,
      ws_to_copy_ceiling_2: ratio,
      capacity_ratio:
        ws?.cpu_us_per_event.capacity_events_per_s && copy2?.capacity_rows_per_s
          ? {
              ws: ws.cpu_us_per_event.capacity_events_per_s,
              copy: copy2.capacity_rows_per_s,
              ratio: Math.round((ws.cpu_us_per_event.capacity_events_per_s / copy2.capacity_rows_per_s) * 100) / 100,
            }
          : null,
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

/**
 * The scale-out phase: 1, 2, then 3 daemons on one PostgreSQL behind the shipped HAProxy configuration
 * (systemd/haproxy/ingestd.cfg), the same WebSocket load through the balancer each time; events/s, and CPU
 * in cores for each daemon, HAProxy and PostgreSQL; rows verified per step. Run as the `scale-out` phase of
 * `npm run bench` (run.ts), or alone with `npm run bench:scale-out` (a database of its own; writes
 * .bench/scale-out.json and .bench/scale-out.svg). What it shows and predicts: docs/performance.md#scale-out.
 *
 * Flags when alone: --duration S (20), --connections N (16), --max-daemons N (3), --workers N per daemon
 * (1), --dedup on|off (off: the daemons' work, not the id state's, is what is spread over daemons).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { configPath } from "../src/ops/config";
import { type BenchDb, startBenchDb } from "./bench-db";
import { type DaemonProcess, ROOT, startDaemon } from "./daemon-process";
import type { IdKind } from "./event-factory";
import { BENCH_STREAM, createSchema } from "./event-table";
import { type PhaseSpec, runLoadPhase } from "./load-phase";
import { processCpuSeconds, RssSampler, treeCpuSeconds } from "./proc-stats";

export interface ScaleOutOptions {
  durationS: number;
  connections: number;
  maxDaemons: number;
  workers: number;
  dedup: boolean;
  idKind: IdKind;
  schema: string;
}

export interface ScaleOutStep {
  daemons: number;
  events_per_s: number;
  ack_p50_ms: number;
  ack_p99_ms: number;
  verdict: string;
  verified: boolean;
  rows_in_db: number;
  /** CPU in cores (CPU seconds / wall seconds) over the phase. */
  cpu_cores: { daemons: number[]; haproxy: number | null; postgres: number | null; generators: number };
  /** CPU µs per accepted event. */
  us_per_event: { daemons: number; haproxy: number | null; postgres: number | null };
}

function parse(argv: string[]): ScaleOutOptions {
  const o: ScaleOutOptions = {
    durationS: 20,
    connections: 16,
    maxDaemons: 3,
    workers: 1,
    dedup: false,
    idKind: "uuidv4",
    schema: "public",
  };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    const int = () => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${argv[i]}: expected a positive integer, got ${v}`);
      i++;
      return n;
    };
    if (argv[i] === "--duration") o.durationS = int();
    else if (argv[i] === "--connections") o.connections = int();
    else if (argv[i] === "--max-daemons") o.maxDaemons = int();
    else if (argv[i] === "--workers") o.workers = int();
    else if (argv[i] === "--dedup" && (v === "on" || v === "off")) {
      o.dedup = v === "on";
      i++;
    } else throw new Error(`unknown flag ${argv[i]}`);
  }
  return o;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

/** The shipped HAProxy configuration for `ports`, run in the foreground by this user. */
function haproxyConfig(listen: number, ports: number[]): string {
  const text = fs.readFileSync(path.join(ROOT, "systemd/haproxy/ingestd.cfg"), "utf8");
  const template = /^(\s*server \S+) 127\.0\.0\.1:\d+$/m.exec(text);
  if (!template) throw new Error("systemd/haproxy/ingestd.cfg has no server line");
  const servers = ports.map((p, i) => `    server ingestd${i + 1} 127.0.0.1:${p}`).join("\n");
  return text
    .replace(/^\s*(chroot|user|group|daemon|stats socket)\b.*\n/gm, "")
    .replace(/^(\s*)maxconn \d+$/m, "$1maxconn 4000")
    .replace(/^(\s*)log \/dev\/log local0$/m, "$1log stdout format raw local0")
    .replace(/^(\s*)bind 0\.0\.0\.0:8080$/m, `$1bind 127.0.0.1:${listen}`)
    .replace(/(^\s*server \S+ 127\.0\.0\.1:\d+\n?)+/m, `${servers}\n`);
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        r(true);
      });
      s.on("error", () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A copy of the configuration with deduplication of the bench stream set (no environment override exists). */
function configFile(dedup: boolean): string {
  const config = JSON.parse(fs.readFileSync(configPath(process.env), "utf8"));
  config.deduplicate = { ...(config.deduplicate ?? {}), [BENCH_STREAM]: dedup };
  const file = path.join(os.tmpdir(), `ingestd-scale-out-${process.pid}.json`);
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

const round = (n: number, d = 2) => Math.round(n * 10 ** d) / 10 ** d;

async function step(
  n: number,
  o: ScaleOutOptions,
  db: BenchDb,
  env: Record<string, string>,
  log: (s: string) => void,
): Promise<ScaleOutStep> {
  const children = new Set<ChildProcess>();
  const daemons: DaemonProcess[] = [];
  let haproxy: ChildProcess | null = null;
  try {
    for (let i = 0; i < n; i++) {
      daemons.push(await startDaemon({ databaseUrl: db.url, env, nodeArgs: [], startTimeoutMs: 60_000 }));
    }
    const listen = await freePort();
    const cfg = path.join(os.tmpdir(), `ingestd-scale-out-${process.pid}.cfg`);
    fs.writeFileSync(
      cfg,
      haproxyConfig(
        listen,
        daemons.map((d) => d.port),
      ),
    );
    const check = spawnSync("haproxy", ["-c", "-f", cfg], { encoding: "utf8" });
    if (check.status !== 0) throw new Error(`haproxy -c: ${check.stdout}${check.stderr}`);
    haproxy = spawn("haproxy", ["-db", "-f", cfg], { stdio: "ignore" });
    children.add(haproxy);
    await waitForPort(listen, 10_000);
    // Two health checks a second apart bring every daemon up.
    await new Promise((r) => setTimeout(r, 2500));
    log(`${n} daemon(s) on ${daemons.map((d) => d.port).join(", ")} behind HAProxy on ${listen}`);

    const spec: PhaseSpec = {
      name: `${n} daemon(s)`,
      mode: "ws",
      idKind: o.idKind,
      durationS: o.durationS,
      drainTimeoutS: 30,
      generators: 2,
      connections: o.connections,
      inFlight: 0,
      intervalS: 0,
      concurrency: 0,
      rate: 0,
      eventsPerFrame: 100,
    };
    const rss = new RssSampler(daemons[0].pid);
    const before = { d: daemons.map((d) => processCpuSeconds(d.pid) ?? 0), h: processCpuSeconds(haproxy.pid!), pg: db.postmasterPid() };
    const pgBefore = before.pg === null ? null : treeCpuSeconds(before.pg);
    const result = await runLoadPhase(spec, {
      port: listen,
      daemonPid: daemons[0].pid,
      db,
      schema: "public",
      rss,
      cores: os.availableParallelism(),
      token: null,
      children,
      log,
    });
    const wall = result.cpu.wall_s;
    const cores = (a: number | null, b: number | null) => (a === null || b === null ? null : round((b - a) / wall));
    const daemonCores = daemons.map((d, i) => cores(before.d[i], processCpuSeconds(d.pid)) ?? 0);
    const haproxyCores = cores(before.h, processCpuSeconds(haproxy.pid!));
    const pgCores = before.pg === null ? null : cores(pgBefore, treeCpuSeconds(before.pg));
    const perEvent = (c: number | null) => (c === null || result.accepted === 0 ? null : round((c * wall * 1e6) / result.accepted, 1));
    return {
      daemons: n,
      events_per_s: result.events_per_s,
      ack_p50_ms: result.ack_latency.p50_ms,
      ack_p99_ms: result.ack_latency.p99_ms,
      verdict: `${result.verdict} (${result.verify_note})`,
      verified: result.verified,
      rows_in_db: result.rows_in_db,
      cpu_cores: { daemons: daemonCores, haproxy: haproxyCores, postgres: pgCores, generators: result.cpu.generators_cores },
      us_per_event: {
        daemons: perEvent(daemonCores.reduce((a, b) => a + b, 0)) ?? 0,
        haproxy: perEvent(haproxyCores),
        postgres: perEvent(pgCores),
      },
    };
  } finally {
    await Promise.all(daemons.map((d) => d.stop(30_000)));
    haproxy?.kill("SIGTERM");
    for (const c of children) c.kill("SIGKILL");
  }
}

/** Events/s per step as bars, each bar's CPU split (daemons, HAProxy, PostgreSQL) beside it. */
export function scaleOutSvg(steps: ScaleOutStep[], title: string): string {
  const W = 640;
  const H = 340;
  const left = 70;
  const top = 50;
  const plotH = 230;
  const max = Math.max(1, ...steps.map((s) => s.events_per_s)) * 1.15;
  const cpuMax = Math.max(
    1,
    ...steps.map((s) => s.cpu_cores.daemons.reduce((a, b) => a + b, 0) + (s.cpu_cores.haproxy ?? 0) + (s.cpu_cores.postgres ?? 0)),
  );
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${title.replace(/&/g, "&amp;").replace(/</g, "&lt;")}</text>`,
    `<text x="${left - 8}" y="${top - 10}" text-anchor="end" fill="#1f77b4">events/s</text>`,
    `<line x1="${left}" x2="${W - 20}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`,
  ];
  const slot = (W - left - 20) / steps.length;
  steps.forEach((s, i) => {
    const x = left + i * slot + slot * 0.15;
    const h = (s.events_per_s / max) * plotH;
    out.push(
      `<rect x="${x.toFixed(1)}" y="${(top + plotH - h).toFixed(1)}" width="${(slot * 0.32).toFixed(1)}" height="${h.toFixed(1)}" fill="#1f77b4"/>`,
    );
    out.push(
      `<text x="${(x + slot * 0.16).toFixed(1)}" y="${(top + plotH - h - 5).toFixed(1)}" text-anchor="middle">${s.events_per_s.toLocaleString("en-US")}</text>`,
    );
    // CPU stack: daemons (orange shades), HAProxy (green), PostgreSQL (purple), in cores.
    let y = top + plotH;
    const cx = x + slot * 0.38;
    const parts: Array<[number, string]> = [
      ...s.cpu_cores.daemons.map((c, k): [number, string] => [c, ["#ff7f0e", "#ffbb78", "#d62728"][k % 3]]),
      [s.cpu_cores.haproxy ?? 0, "#2ca02c"],
      [s.cpu_cores.postgres ?? 0, "#9467bd"],
    ];
    for (const [c, color] of parts) {
      const hh = (c / cpuMax) * plotH * 0.9;
      y -= hh;
      out.push(
        `<rect x="${cx.toFixed(1)}" y="${y.toFixed(1)}" width="${(slot * 0.32).toFixed(1)}" height="${hh.toFixed(1)}" fill="${color}"/>`,
      );
    }
    const total = parts.reduce((a, [c]) => a + c, 0);
    out.push(`<text x="${(cx + slot * 0.16).toFixed(1)}" y="${(y - 5).toFixed(1)}" text-anchor="middle">${total.toFixed(2)} cores</text>`);
    out.push(
      `<text x="${(left + i * slot + slot / 2).toFixed(1)}" y="${top + plotH + 18}" text-anchor="middle">${s.daemons} daemon${s.daemons > 1 ? "s" : ""}</text>`,
    );
  });
  const legend: Array<[string, string]> = [
    ["#1f77b4", "events/s"],
    ["#ff7f0e", "daemon 1"],
    ["#ffbb78", "daemon 2"],
    ["#d62728", "daemon 3"],
    ["#2ca02c", "HAProxy"],
    ["#9467bd", "PostgreSQL"],
  ];
  legend.forEach(([color, label], i) => {
    const lx = left + i * 95;
    out.push(`<rect x="${lx}" y="${H - 24}" width="10" height="10" fill="${color}"/>`);
    out.push(`<text x="${lx + 14}" y="${H - 15}">${label}</text>`);
  });
  out.push("</svg>");
  return out.join("\n");
}

/** Whether haproxy is installed (the phase needs it). */
export function haproxyAvailable(): boolean {
  return spawnSync("sh", ["-c", "command -v haproxy"]).status === 0;
}

/** 1 to `o.maxDaemons` daemons in turn on `db` (its schema created), deduplication as `o.dedup`. */
export async function runScaleOut(db: BenchDb, o: ScaleOutOptions, log: (line: string) => void): Promise<ScaleOutStep[]> {
  const file = configFile(o.dedup);
  try {
    const env = { WORKERS: String(o.workers), INGESTD_CONFIG: file };
    const steps: ScaleOutStep[] = [];
    for (let n = 1; n <= o.maxDaemons; n++) {
      const s = await step(n, o, db, env, log);
      log(`scale-out, ${n} daemon(s): ${s.events_per_s} events/s, cores ${JSON.stringify(s.cpu_cores)}, rows ${s.verdict}`);
      steps.push(s);
    }
    return steps;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** The steps as text lines (the bench report and the standalone command print the same). */
export function scaleOutLines(steps: ScaleOutStep[]): string[] {
  return [
    "daemons | events/s | ack p50 / p99 ms | CPU cores: daemons | HAProxy | PostgreSQL | µs/event: daemons | HAProxy | PostgreSQL | rows",
    ...steps.map(
      (s) =>
        `${s.daemons} | ${s.events_per_s} | ${s.ack_p50_ms} / ${s.ack_p99_ms} | ${s.cpu_cores.daemons.join(" + ")} | ${s.cpu_cores.haproxy} | ${s.cpu_cores.postgres} | ${s.us_per_event.daemons} | ${s.us_per_event.haproxy} | ${s.us_per_event.postgres} | ${s.verdict}`,
    ),
  ];
}

async function main(argv: string[]): Promise<number> {
  const o = parse(argv);
  const t0 = Date.now();
  const log = (line: string) => process.stderr.write(`[scale-out ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${line}\n`);
  if (!haproxyAvailable()) {
    process.stderr.write("bench:scale-out needs haproxy (apt-get install haproxy)\n");
    return 69;
  }
  const loadAtStart = os.loadavg()[0];
  const db = await startBenchDb(log);
  try {
    await createSchema(db.url, "public");
    const steps = await runScaleOut(db, o, log);
    const lines = [
      `scale-out: ${o.connections} WebSocket connections through HAProxy, ${o.durationS} s per step, WORKERS=${o.workers} per daemon, dedup ${o.dedup ? "on" : "off"}`,
      `machine: ${os.availableParallelism()} cores, load average ${round(loadAtStart)} at start, ${round(os.loadavg()[0])} at end`,
      ...scaleOutLines(steps),
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
    const dir = path.join(ROOT, ".bench");
    fs.mkdirSync(dir, { recursive: true });
    const report = {
      started_at: new Date(t0).toISOString(),
      options: o,
      load_average: [loadAtStart, os.loadavg()[0]],
      cores: os.availableParallelism(),
      steps,
    };
    fs.writeFileSync(path.join(dir, "scale-out.json"), `${JSON.stringify(report, null, 2)}\n`);
    fs.writeFileSync(
      path.join(dir, "scale-out.svg"),
      scaleOutSvg(
        steps,
        `ingestd scale-out behind HAProxy, ${os.availableParallelism()} cores, ${report.started_at.slice(0, 16).replace("T", " ")} UTC`,
      ),
    );
    process.stdout.write("report: .bench/scale-out.json, chart: .bench/scale-out.svg\n");
    return steps.every((s) => s.verified) ? 0 : 1;
  } finally {
    await db.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: Error) => {
      process.stderr.write(`bench:scale-out failed: ${err.stack ?? err.message}\n`);
      process.exitCode = 1;
    },
  );
}

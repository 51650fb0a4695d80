/**
 * `ingestd top`: a live terminal view of a running daemon, read from its HTTP endpoints once a second
 * (GET /v1/latency, /metrics, /health). Plain ANSI escapes on the alternate screen, so it works over SSH in
 * any terminal without curses; the terminal is restored on q, Ctrl-C, SIGTERM or a hang-up.
 */
import http from "node:http";
import https from "node:https";
import { parseArgs } from "node:util";
import type { IngestdConfig } from "../ops/config";
import { loadCheckedConfig } from "../security/checked-config";
import { UsageError } from "./usage-error";

export interface TopOptions {
  /** Base URL of the daemon, e.g. http://127.0.0.1:8080 */
  url: string;
  intervalMs: number;
  /** Print one frame without escapes and return (scripts, or a quick look). */
  once: boolean;
  input: NodeJS.ReadStream;
  output: NodeJS.WriteStream;
}

// ---------------------------------------------------------------------------------------------------------
// What the endpoints return (the parts read here).

interface Percentiles {
  count: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  max_ms: number;
}

interface LatencyReport {
  interval_ms: number;
  interval_end: string;
  last_interval: Record<string, Record<string, Percentiles>>;
}

interface HealthReport {
  status?: string;
  database?: string;
  version?: string;
  uptime_seconds?: number;
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition into samples (comments and blank lines skipped). */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (raw === "" || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[2]) for (const l of m[2].matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function sum(samples: readonly Sample[], name: string, where: Record<string, string> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

function first(samples: readonly Sample[], name: string): number | null {
  const s = samples.find((x) => x.name === name);
  return s ? s.value : null;
}

// ---------------------------------------------------------------------------------------------------------
// One poll of the daemon, and rates between two polls.

export interface Snapshot {
  at: number;
  latency: LatencyReport | null;
  metrics: Sample[];
  health: HealthReport | null;
  error: string | null;
}

/**
 * GET with node:http rather than fetch: fetch refuses the "bad ports" of the Fetch standard (6000, 6665-6669,
 * 10080, ...), and a daemon may listen on one. One keep-alive connection is reused from poll to poll.
 */
const agents = { http: new http.Agent({ keepAlive: true, maxSockets: 4 }), https: new https.Agent({ keepAlive: true, maxSockets: 4 }) };

function get(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const secure = url.startsWith("https:");
    const req = (secure ? https : http).get(url, { agent: secure ? agents.https : agents.http, timeout: timeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" })));
    req.on("error", reject);
  });
}

async function getJson<T>(url: string, timeoutMs: number): Promise<T> {
  const res = await get(url, timeoutMs);
  // /health answers 503 with a JSON body when the database is down: still a valid report.
  try {
    return JSON.parse(res.body) as T;
  } catch {
    throw new Error(`${url}: HTTP ${res.status}, not JSON`);
  }
}

export async function poll(base: string, timeoutMs: number): Promise<Snapshot> {
  const at = Date.now();
  const [latency, metrics, health] = await Promise.allSettled([
    getJson<LatencyReport>(`${base}/v1/latency`, timeoutMs),
    get(`${base}/metrics`, timeoutMs).then((r) => {
      if (r.status !== 200) throw new Error(`${base}/metrics: HTTP ${r.status}`);
      return r.body;
    }),
    getJson<HealthReport>(`${base}/health`, timeoutMs),
  ]);
  const failed = [latency, metrics, health].find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
  return {
    at,
    latency: latency.status === "fulfilled" ? latency.value : null,
    metrics: metrics.status === "fulfilled" ? parsePrometheusText(metrics.value) : [],
    health: health.status === "fulfilled" ? health.value : null,
    error: failed ? describeError(failed.reason) : null,
  };
}

function describeError(err: unknown): string {
  const e = err as Error & { code?: string };
  return e?.code ?? e?.message ?? String(err);
}

/** Per-second rate of a counter between two snapshots; null without a previous one or after a restart. */
function rate(prev: Snapshot | null, cur: Snapshot, name: string, where: Record<string, string> = {}): number | null {
  if (!prev || prev.metrics.length === 0 || cur.metrics.length === 0) return null;
  const dt = (cur.at - prev.at) / 1000;
  const d = sum(cur.metrics, name, where) - sum(prev.metrics, name, where);
  if (dt <= 0 || d < 0) return null;
  return d / dt;
}

// ---------------------------------------------------------------------------------------------------------
// Rendering: plain lines; the caller decides whether they go to the alternate screen.

const STAGE_ORDER = ["receive", "validate", "commit", "ack"];

function int(n: number | null): string {
  return n === null ? "-" : Math.round(n).toLocaleString("en-US");
}

/** Milliseconds with three significant digits, so 0.042 and 1234 both fit a column. */
function ms(n: number): string {
  if (n >= 100) return Math.round(n).toLocaleString("en-US");
  if (n >= 10) return n.toFixed(1);
  if (n >= 1) return n.toFixed(2);
  return n.toFixed(3);
}

function mib(bytes: number): string {
  return bytes > 0 && bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}

function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return d > 0 ? `${d}d${h}h${m}m` : h > 0 ? `${h}h${m}m${s}s` : m > 0 ? `${m}m${s}s` : `${s}s`;
}

function bar(ratio: number, width: number): string {
  const filled = Math.max(0, Math.min(width, Math.round(ratio * width)));
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
}

const pad = (s: string, n: number) => (s.length >= n ? s : s + " ".repeat(n - s.length));
const lpad = (s: string, n: number) => (s.length >= n ? s : " ".repeat(n - s.length) + s);

export function renderFrame(url: string, prev: Snapshot | null, cur: Snapshot, intervalMs: number, interactive = true): string[] {
  const out: string[] = [];
  const m = cur.metrics;
  const h = cur.health;
  const clock = new Date(cur.at).toISOString().slice(11, 19);
  const version = h?.version ?? m.find((s) => s.name === "ingestd_build_info")?.labels.version ?? "?";
  const uptime = h?.uptime_seconds !== undefined ? `up ${duration(h.uptime_seconds)}` : "";
  const state = h?.status ?? (cur.error ? "unreachable" : "?");
  out.push(`ingestd top  ${url}  v${version}  ${uptime}  ${state}  ${clock} UTC`);

  if (cur.error && m.length === 0 && cur.latency === null) {
    out.push("");
    out.push(`cannot reach the daemon: ${cur.error}${interactive ? ` (retrying every ${intervalMs / 1000}s)` : ""}`);
    if (interactive) out.push("", "q or Ctrl-C to quit");
    return out;
  }

  const dbUp = first(m, "ingestd_database_up");
  const database = h?.database ?? (dbUp === null ? "?" : dbUp === 1 ? "connected" : "disconnected");
  const evAll = rate(prev, cur, "ingestd_events_total");
  const evAcc = rate(prev, cur, "ingestd_events_total", { outcome: "accepted" });
  const evRej = rate(prev, cur, "ingestd_events_total", { outcome: "rejected" });
  const evDup = rate(prev, cur, "ingestd_events_total", { outcome: "duplicate" });
  const reqs = rate(prev, cur, "ingestd_ingest_requests_total");
  const http = rate(prev, cur, "ingestd_http_requests_total");
  out.push(`database ${database}${cur.error ? `   (partial data: ${cur.error})` : ""}`);
  out.push(`events/s ${lpad(int(evAll), 9)}   accepted ${int(evAcc)}  rejected ${int(evRej)}  duplicate ${int(evDup)}`);
  out.push(`ingest requests+frames/s ${int(reqs)}   http requests/s ${int(http)}`);

  const used = first(m, "ingestd_ring_used_bytes") ?? 0;
  const capacity = first(m, "ingestd_ring_capacity_bytes") ?? 0;
  const fill = capacity > 0 ? used / capacity : 0;
  out.push(`ring     ${mib(used)} / ${mib(capacity)}  ${(fill * 100).toFixed(1)}%  ${bar(fill, 20)}`);
  const tasks = first(m, "ingestd_tasks_in_flight");
  const workers = first(m, "ingestd_worker_threads");
  const busy = first(m, "ingestd_worker_pool_utilization_ratio");
  const conns = first(m, "ingestd_ws_connections");
  const rss = first(m, "process_resident_memory_bytes");
  out.push(
    `tasks in flight ${int(tasks)}   workers ${int(workers)} busy ${busy === null ? "-" : `${Math.round(busy * 100)}%`}` +
      `   ws connections ${int(conns)}   rss ${rss === null ? "-" : mib(rss)}`,
  );
  out.push("");

  const lat = cur.latency;
  const secs = lat ? lat.interval_ms / 1000 : 1;
  out.push(
    `${pad("stage", 9)} ${pad("stream", 18)} ${lpad("req/s", 8)} ${lpad("p50", 8)} ${lpad("p95", 8)} ${lpad("p99", 8)} ${lpad("max", 8)}   ms, last ${secs}s`,
  );
  let rows = 0;
  if (lat) {
    const stages = [...STAGE_ORDER, ...Object.keys(lat.last_interval).filter((s) => !STAGE_ORDER.includes(s))];
    for (const stage of stages) {
      const byStream = lat.last_interval[stage];
      if (!byStream) continue;
      for (const stream of Object.keys(byStream).sort()) {
        const p = byStream[stream];
        if (p.count === 0) continue;
        rows++;
        out.push(
          `${pad(stage, 9)} ${pad(stream, 18)} ${lpad(int(p.count / secs), 8)} ${lpad(ms(p.p50_ms), 8)} ${lpad(ms(p.p95_ms), 8)} ` +
            `${lpad(ms(p.p99_ms), 8)} ${lpad(ms(p.max_ms), 8)}`,
        );
      }
    }
  }
  if (rows === 0) out.push("(no requests in the last interval)");
  out.push("");

  const streams = [...new Set(m.filter((s) => s.name === "ingestd_events_total").map((s) => s.labels.stream))].sort();
  out.push(`${pad("stream", 28)} ${lpad("events/s", 10)} ${lpad("accepted/s", 11)} ${lpad("rejected/s", 11)} ${lpad("dup/s", 8)}`);
  for (const stream of streams) {
    out.push(
      `${pad(stream, 28)} ${lpad(int(rate(prev, cur, "ingestd_events_total", { stream })), 10)} ` +
        `${lpad(int(rate(prev, cur, "ingestd_events_total", { stream, outcome: "accepted" })), 11)} ` +
        `${lpad(int(rate(prev, cur, "ingestd_events_total", { stream, outcome: "rejected" })), 11)} ` +
        `${lpad(int(rate(prev, cur, "ingestd_events_total", { stream, outcome: "duplicate" })), 8)}`,
    );
  }
  if (streams.length === 0) out.push("(no events yet)");
  if (interactive) out.push("", `q or Ctrl-C to quit · refresh ${intervalMs / 1000}s`);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The terminal loop.

const ESC = "\x1b[";
const ALT_SCREEN_ON = `${ESC}?1049h`;
const ALT_SCREEN_OFF = `${ESC}?1049l`;
const CURSOR_HIDE = `${ESC}?25l`;
const CURSOR_SHOW = `${ESC}?25h`;
const HOME = `${ESC}H`;
const CLEAR_EOL = `${ESC}K`;
const CLEAR_EOS = `${ESC}J`;

/** Runs until q / Ctrl-C / a signal; resolves with the exit status. */
export async function runTop(options: TopOptions): Promise<number> {
  const { url, intervalMs, input, output } = options;
  const base = url.replace(/\/+$/, "");
  const timeoutMs = Math.max(500, intervalMs - 100);

  if (options.once) {
    // Two polls a second apart: rates need a difference.
    const a = await poll(base, timeoutMs);
    await new Promise((r) => setTimeout(r, intervalMs));
    const b = await poll(base, timeoutMs);
    output.write(renderFrame(base, a, b, intervalMs, false).join("\n") + "\n");
    return b.error && b.metrics.length === 0 ? 1 : 0;
  }

  const tty = output.isTTY === true;
  let stopped = false;
  let wake: (() => void) | null = null;
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));

  const restore = () => {
    if (tty) output.write(`${CURSOR_SHOW}${ALT_SCREEN_OFF}`);
    if (input.isTTY) input.setRawMode(false);
    input.pause();
  };
  const stop = (code: number) => {
    if (stopped) return;
    stopped = true;
    restore();
    process.off("exit", restore);
    wake?.();
    resolveDone(code);
  };

  let prev: Snapshot | null = null;
  let cur: Snapshot | null = null;
  const draw = () => {
    if (!cur || stopped) return;
    const lines = renderFrame(base, prev, cur, intervalMs);
    if (tty) {
      const width = output.columns > 0 ? output.columns : 120;
      const height = output.rows > 0 ? output.rows : 50;
      const shown = lines.slice(0, height).map((l) => (l.length > width ? l.slice(0, width) : l));
      // "\n" alone: the tty driver's ONLCR (kept by Node's raw mode) adds the carriage return.
      output.write(HOME + shown.map((l) => l + CLEAR_EOL).join("\n") + CLEAR_EOS);
    } else {
      output.write(lines.join("\n") + "\n\n");
    }
  };

  // Keys: in raw mode Ctrl-C arrives as a byte, not as SIGINT.
  if (input.isTTY) input.setRawMode(true);
  input.setEncoding("utf8");
  input.on("data", (key: string) => {
    if (/[qQ\x03\x04]/.test(key)) stop(0);
    else if (key === "\x0c" && tty) {
      output.write(`${ESC}2J`); // Ctrl-L: repaint a garbled screen
      draw();
    }
  });
  input.resume();
  const onSignal = () => stop(0);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.once(sig, onSignal);
  // Last resort if something throws: never leave an operator's terminal in raw mode on the alternate screen.
  process.on("exit", restore);
  if (tty) output.write(`${ALT_SCREEN_ON}${CURSOR_HIDE}`);
  if (tty) output.on("resize", draw);

  const loop = async () => {
    while (!stopped) {
      const started = Date.now();
      const snap = await poll(base, timeoutMs);
      if (stopped) break;
      // After an outage, rates restart from the next poll rather than spanning the gap.
      prev = cur && cur.metrics.length > 0 ? cur : null;
      cur = snap;
      draw();
      const wait = Math.max(0, intervalMs - (Date.now() - started));
      await new Promise<void>((r) => {
        const t = setTimeout(r, wait);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
      wake = null;
    }
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.off(sig, onSignal);
    if (tty) output.off("resize", draw);
  };
  // Resolves on q / a signal at once, even while a poll is still waiting for its answer.
  void loop();
  return done;
}

/** Where the daemon of this configuration listens, as a URL a local client can reach. */
export function localUrl(config: IngestdConfig): string {
  const host =
    config.host === "0.0.0.0" ? "127.0.0.1" : config.host === "::" ? "[::1]" : config.host.includes(":") ? `[${config.host}]` : config.host;
  return `${config.tlsCert ? "https" : "http"}://${host}:${config.port}`;
}

/** `ingestd top [--url URL] [--interval MS] [--once]`; resolves to the exit status. */
export async function topCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { url: { type: "string" }, interval: { type: "string" }, once: { type: "boolean" } },
  });
  const url = values.url ?? localUrl(loadCheckedConfig());
  if (!/^https?:\/\/[^/]+/.test(url)) throw new UsageError(`--url: expected http://host:port, got ${JSON.stringify(url)}`);
  const intervalMs = values.interval === undefined ? 1000 : Number(values.interval);
  if (!Number.isInteger(intervalMs) || intervalMs < 100)
    throw new UsageError(`--interval: expected milliseconds >= 100, got ${JSON.stringify(values.interval)}`);
  return runTop({ url, intervalMs, once: values.once === true, input: process.stdin, output: process.stdout });
}

/**
 * What a bench run does and how hard it pushes, from defaults, BENCH_* environment variables and flags.
 * Defaults keep a whole run under about two minutes on a 2-core machine.
 */
import { parseArgs } from "node:util";

export const PHASES = ["copy", "ws", "http", "paced"] as const;
export type PhaseName = (typeof PHASES)[number];

export interface BenchOptions {
  /** Which parts run, in this order; `copy` is the COPY ceiling. */
  phases: PhaseName[];
  /** Seconds of load per daemon phase. */
  durationS: number;
  /** Seconds of unmeasured WebSocket load before the first measured phase (JIT, connections, caches). */
  warmupS: number;
  /** Load-generator processes per phase; connections and concurrency are spread over them. */
  generators: number;
  wsConnections: number;
  httpConcurrency: number;
  /** Offered rate of the paced phase, events/s over all its connections. */
  pacedRate: number;
  pacedConnections: number;
  eventsPerFrame: number;
  /** Rows per COPY-ceiling phase (split over its streams). */
  copyRows: number;
  /** Rows sent through the daemon's commit SQL without the daemon (0: skip that run). */
  commitSqlRows: number;
  /** How long a phase may wait for outstanding acks after its load stops. */
  drainTimeoutS: number;
  /** Extra daemon environment (WORKERS, BATCH_SIZE, ...), on top of this process's environment. */
  daemonEnv: Record<string, string>;
  /** Run the daemon with an API key of the bench's own (as production does) rather than open. */
  auth: boolean;
  /** Deduplication of the bench stream by event_id: the configuration's choice, or forced on / off. */
  dedup: "default" | "on" | "off";
  /** Extra node flags for the daemon, e.g. `--cpu-prof --cpu-prof-dir=.bench/prof`. */
  daemonNodeArgs: string[];
  /** Where the JSON report goes; null: nowhere. */
  jsonPath: string | null;
  /** Progress lines (to stderr); the report itself always goes to `out`. */
  verbose: boolean;
}

/** Daemon settings passed through from the bench's environment when set (the overrides of docs/operations.md#configuration). */
export const DAEMON_ENV_KEYS = [
  "WORKERS",
  "RING_MB",
  "BATCH_SIZE",
  "BATCH_TIMEOUT_MS",
  "MAX_BATCH_MEMORY_MB",
  "MAX_BODY_MB",
  "WS_WINDOW",
  "WS_MAX_FRAME_BYTES",
  "OVERLOAD_DEADLINE_MS",
  "LOG_LEVEL",
  "INGESTD_CONFIG",
] as const;

export const DEFAULT_OPTIONS: BenchOptions = {
  phases: [...PHASES],
  durationS: 15,
  warmupS: 3,
  generators: 2,
  wsConnections: 8,
  httpConcurrency: 64,
  pacedRate: 50_000,
  pacedConnections: 4,
  eventsPerFrame: 100,
  copyRows: 300_000,
  commitSqlRows: 100_000,
  drainTimeoutS: 30,
  daemonEnv: {},
  dedup: "default",
  auth: true,
  daemonNodeArgs: [],
  jsonPath: null,
  verbose: true,
};

function positiveNumber(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}: expected a non-negative number, got ${JSON.stringify(raw)}`);
  return n;
}

function phaseList(name: string, raw: string | undefined): PhaseName[] | undefined {
  if (raw === undefined || raw === "") return undefined;
  const list = raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const p of list) {
    if (!(PHASES as readonly string[]).includes(p)) throw new Error(`${name}: unknown phase "${p}"; use ${PHASES.join(",")}`);
  }
  return list as PhaseName[];
}

const FLAGS = {
  duration: { type: "string" },
  warmup: { type: "string" },
  generators: { type: "string" },
  "ws-connections": { type: "string" },
  "http-concurrency": { type: "string" },
  "paced-rate": { type: "string" },
  "paced-connections": { type: "string" },
  "copy-rows": { type: "string" },
  "commit-sql-rows": { type: "string" },
  phases: { type: "string" },
  json: { type: "string" },
  dedup: { type: "string" },
  quiet: { type: "boolean" },
} as const;

export const USAGE = `ingestd bench — load the real daemon and report events/s, ack latency, COPY ceiling

Flags (environment variable in brackets):
  --duration S            seconds of load per phase [BENCH_DURATION_S, 15]
  --warmup S              unmeasured WebSocket warm-up [BENCH_WARMUP_S, 3]
  --generators N          load-generator processes per phase [BENCH_GENERATORS, 2]
  --ws-connections N      WebSocket connections, full-speed phase [BENCH_WS_CONNECTIONS, 8]
  --http-concurrency N    HTTP requests in flight [BENCH_HTTP_CONCURRENCY, 64]
  --paced-rate N          events/s offered in the paced phase [BENCH_PACED_RATE, 50000]
  --paced-connections N   WebSocket connections, paced phase [BENCH_PACED_CONNECTIONS, 4]
  --copy-rows N           rows per COPY-ceiling phase [BENCH_COPY_ROWS, 300000]
  --commit-sql-rows N     rows through the daemon's commit SQL, no daemon; 0 skips [BENCH_COMMIT_SQL_ROWS, 100000]
  --phases LIST           any of copy,ws,http,paced [BENCH_PHASES, all]
  --dedup on|off          force event_id deduplication of the events stream [BENCH_DEDUP, config]
  --json PATH             JSON report path [BENCH_JSON, .bench/latest.json]
  --quiet                 no progress lines
Daemon settings pass through: ${DAEMON_ENV_KEYS.join(", ")}; node flags for it: BENCH_DAEMON_NODE_ARGS.
BENCH_AUTH=off runs the daemon without the bench's API key (open, unless its configuration has keys).
DATABASE_URL: use that server (a fresh database is created and dropped) instead of an embedded one.
`;

/** Options from the environment, then flags (flags win). */
export function optionsFromEnv(env: NodeJS.ProcessEnv, argv: string[], defaultJsonPath: string): BenchOptions {
  const { values } = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: true });
  const pick = (flag: string | undefined, envName: string) =>
    positiveNumber(flag !== undefined ? `--${envName}` : envName, flag ?? env[envName]);
  const o: BenchOptions = { ...DEFAULT_OPTIONS, daemonEnv: {}, phases: [...DEFAULT_OPTIONS.phases] };
  o.durationS = pick(values.duration, "BENCH_DURATION_S") ?? o.durationS;
  o.warmupS = pick(values.warmup, "BENCH_WARMUP_S") ?? o.warmupS;
  o.generators = Math.max(1, Math.round(pick(values.generators, "BENCH_GENERATORS") ?? o.generators));
  o.wsConnections = Math.max(1, Math.round(pick(values["ws-connections"], "BENCH_WS_CONNECTIONS") ?? o.wsConnections));
  o.httpConcurrency = Math.max(1, Math.round(pick(values["http-concurrency"], "BENCH_HTTP_CONCURRENCY") ?? o.httpConcurrency));
  o.pacedRate = Math.max(1, pick(values["paced-rate"], "BENCH_PACED_RATE") ?? o.pacedRate);
  o.pacedConnections = Math.max(1, Math.round(pick(values["paced-connections"], "BENCH_PACED_CONNECTIONS") ?? o.pacedConnections));
  o.copyRows = Math.max(1000, Math.round(pick(values["copy-rows"], "BENCH_COPY_ROWS") ?? o.copyRows));
  o.commitSqlRows = Math.round(pick(values["commit-sql-rows"], "BENCH_COMMIT_SQL_ROWS") ?? o.commitSqlRows);
  o.eventsPerFrame = Math.max(1, Math.round(positiveNumber("BENCH_EVENTS_PER_FRAME", env.BENCH_EVENTS_PER_FRAME) ?? o.eventsPerFrame));
  o.drainTimeoutS = positiveNumber("BENCH_DRAIN_TIMEOUT_S", env.BENCH_DRAIN_TIMEOUT_S) ?? o.drainTimeoutS;
  o.phases = phaseList("--phases", values.phases) ?? phaseList("BENCH_PHASES", env.BENCH_PHASES) ?? o.phases;
  const dedup = values.dedup ?? env.BENCH_DEDUP ?? "default";
  if (dedup !== "default" && dedup !== "on" && dedup !== "off")
    throw new Error(`--dedup / BENCH_DEDUP: expected on or off, got ${JSON.stringify(dedup)}`);
  o.dedup = dedup;
  const auth = env.BENCH_AUTH ?? "on";
  if (auth !== "on" && auth !== "off") throw new Error(`BENCH_AUTH: expected on or off, got ${JSON.stringify(auth)}`);
  o.auth = auth === "on";
  o.jsonPath = values.json ?? env.BENCH_JSON ?? defaultJsonPath;
  o.verbose = !values.quiet && env.BENCH_QUIET !== "1";
  for (const key of DAEMON_ENV_KEYS) {
    const v = env[key];
    if (v !== undefined && v !== "") o.daemonEnv[key] = v;
  }
  o.daemonNodeArgs = (env.BENCH_DAEMON_NODE_ARGS ?? "").split(/\s+/).filter(Boolean);
  return o;
}

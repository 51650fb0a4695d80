/**
 * What a bench run does and how hard it pushes, from defaults, BENCH_* environment variables and flags.
 * The defaults are the full run of docs/performance.md (about 20–25 minutes on a 2-core machine, most of it
 * the id-state pre-fill and the 10-minute soak); `--quick` is a short run for development.
 */
import { parseArgs } from "node:util";
import { ID_KINDS, type IdKind } from "./event-factory";

/**
 * `copy` is the COPY ceiling; `ws-dedup-off` runs on a second daemon with event-id deduplication off (the
 * other half of what deduplication costs PostgreSQL); `ws-sessions` runs on that daemon too, each connection
 * a producer session (the exactly-once mode's target); `soak` is the long WebSocket phase, reported per interval.
 */
export const PHASES = ["copy", "ws-dedup-off", "ws-sessions", "ws", "http", "paced", "soak", "scale-out"] as const;
export type PhaseName = (typeof PHASES)[number];

export interface BenchOptions {
  /** Which parts run, in this order; `copy` is the COPY ceiling. */
  phases: PhaseName[];
  /** Seconds of load per daemon phase (the soak has its own). */
  durationS: number;
  /** Seconds of the soak phase, and of each interval it is reported by. */
  soakS: number;
  soakIntervalS: number;
  /** Event ids: random UUIDv4 (default) or time-ordered UUIDv7 (the labelled second run). */
  idKind: IdKind;
  /** Ids the id state remembers before the first timed phase (pre-filled once, untimed; a kept database only gets the ids it lacks). */
  prefillIds: number;
  /** Frames in flight per WebSocket connection at most, full-speed phases (0: the daemon's window). */
  wsInFlight: number;
  /** Short phases and a small pre-fill, for development: figures are not comparable with a full run. */
  quick: boolean;
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
  /** WebSocket phases open producer sessions (`&producer=`, docs/websocket-protocol.md#producer-sessions). */
  producerSessions: boolean;
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
  "DEDUP_FILTER_MB",
  "WORKER_YOUNG_GENERATION_MB",
  "LOG_LEVEL",
  "INGESTD_CONFIG",
] as const;

export const DEFAULT_OPTIONS: BenchOptions = {
  phases: [...PHASES],
  durationS: 30,
  soakS: 600,
  soakIntervalS: 60,
  idKind: "uuidv4",
  prefillIds: 20_000_000,
  wsInFlight: 8,
  quick: false,
  warmupS: 10,
  generators: 2,
  wsConnections: 16,
  httpConcurrency: 64,
  pacedRate: 50_000,
  pacedConnections: 4,
  eventsPerFrame: 100,
  copyRows: 600_000,
  commitSqlRows: 100_000,
  drainTimeoutS: 30,
  daemonEnv: {},
  dedup: "default",
  producerSessions: false,
  auth: true,
  daemonNodeArgs: [],
  jsonPath: null,
  verbose: true,
};

/** `--quick` / BENCH_QUICK=1: the same phases, short, on a small id state (a few minutes in all). */
export const QUICK_OPTIONS: Partial<BenchOptions> = {
  quick: true,
  durationS: 5,
  warmupS: 2,
  soakS: 60,
  soakIntervalS: 10,
  prefillIds: 200_000,
  copyRows: 100_000,
  commitSqlRows: 20_000,
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
  "producer-sessions": { type: "boolean" },
  quiet: { type: "boolean" },
  quick: { type: "boolean" },
  ids: { type: "string" },
  prefill: { type: "string" },
  soak: { type: "string" },
  "soak-interval": { type: "string" },
  "ws-in-flight": { type: "string" },
} as const;

export const USAGE = `ingestd bench — load the real daemon with realistic events; report events/s and ack latency
as ratios to the COPY ceiling measured in the same run, CPU per event, and the targets of docs/performance.md

The default is the full run (about 20–25 minutes on 2 cores): 20,000,000 ids pre-filled into the id state
(once, untimed; skipped when it already holds them), the COPY ceiling (1 and 2 streams), a daemon with
deduplication off (phase ws-dedup-off, then ws-sessions: the same WebSocket load, each connection a producer
session), then the configured daemon: WebSocket (16 connections, 8 frames of
100 events in flight each), HTTP (100 events a request), WebSocket paced at 50,000 events/s, and a 10-minute
WebSocket soak reported per minute (chart: <json path>-soak.svg). Events are ~300-byte JSON with random
UUIDv4 ids; --ids uuidv7 is the labelled second run with time-ordered ids. The table and the id state are
never emptied between phases; rows added are checked against events acknowledged, phase by phase.

Flags (environment variable in brackets):
  --quick                 short phases (5 s, soak 60 s by 10 s), 200,000 pre-filled ids: for development [BENCH_QUICK=1]
  --ids uuidv4|uuidv7     event id kind, also of the pre-filled ids [BENCH_IDS, uuidv4]
  --prefill N             ids in the id state before the timed phases [BENCH_PREFILL, 20000000]
  --duration S            seconds of load per phase, soak excepted [BENCH_DURATION_S, 30]
  --soak S                seconds of the soak phase [BENCH_SOAK_S, 600]
  --soak-interval S       seconds per reported soak interval [BENCH_SOAK_INTERVAL_S, 60]
  --warmup S              unmeasured WebSocket warm-up per daemon [BENCH_WARMUP_S, 10]
  --generators N          load-generator processes per phase [BENCH_GENERATORS, 2]
  --ws-connections N      WebSocket connections, full-speed phases [BENCH_WS_CONNECTIONS, 16]
  --ws-in-flight N        frames in flight per connection, full speed; 0: the daemon's window [BENCH_WS_IN_FLIGHT, 8]
  --http-concurrency N    HTTP requests in flight [BENCH_HTTP_CONCURRENCY, 64]
  --paced-rate N          events/s offered in the paced phase [BENCH_PACED_RATE, 50000]
  --paced-connections N   WebSocket connections, paced phase [BENCH_PACED_CONNECTIONS, 4]
  --copy-rows N           rows per COPY-ceiling run [BENCH_COPY_ROWS, 600000]
  --commit-sql-rows N     rows through the daemon's commit SQL, no daemon; 0 skips [BENCH_COMMIT_SQL_ROWS, 100000]
  --phases LIST           any of ${PHASES.join(",")} [BENCH_PHASES, all]
  --dedup on|off          force event_id deduplication of the events stream, main daemon [BENCH_DEDUP, config]
  --producer-sessions     WebSocket phases as producer sessions (with --dedup off: the
                          exactly-once mode's target) [BENCH_PRODUCER_SESSIONS=1]
  --json PATH             JSON report path [BENCH_JSON, .bench/latest.json]
  --quiet                 no progress lines
Daemon settings pass through: ${DAEMON_ENV_KEYS.join(", ")}; node flags for it: BENCH_DAEMON_NODE_ARGS.
BENCH_AUTH=off runs the daemon without the bench's API key (open, unless its configuration has keys).
DATABASE_URL: use that server (a fresh database is created and dropped) instead of an embedded one;
BENCH_DATABASE=NAME with it: use (create if missing) and keep that database, so re-runs reuse the pre-filled id state.
`;

/** Options from the environment, then flags (flags win). */
export function optionsFromEnv(env: NodeJS.ProcessEnv, argv: string[], defaultJsonPath: string): BenchOptions {
  const { values } = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: true });
  const pick = (flag: string | undefined, envName: string) =>
    positiveNumber(flag !== undefined ? `--${envName}` : envName, flag ?? env[envName]);
  const quick = values.quick === true || env.BENCH_QUICK === "1";
  const o: BenchOptions = { ...DEFAULT_OPTIONS, ...(quick ? QUICK_OPTIONS : {}), daemonEnv: {}, phases: [...DEFAULT_OPTIONS.phases] };
  o.soakS = pick(values.soak, "BENCH_SOAK_S") ?? o.soakS;
  o.soakIntervalS = Math.max(1, pick(values["soak-interval"], "BENCH_SOAK_INTERVAL_S") ?? o.soakIntervalS);
  o.prefillIds = Math.round(pick(values.prefill, "BENCH_PREFILL") ?? o.prefillIds);
  o.wsInFlight = Math.round(pick(values["ws-in-flight"], "BENCH_WS_IN_FLIGHT") ?? o.wsInFlight);
  const ids = values.ids ?? env.BENCH_IDS ?? o.idKind;
  if (!(ID_KINDS as readonly string[]).includes(ids))
    throw new Error(`--ids / BENCH_IDS: expected ${ID_KINDS.join(" or ")}, got ${JSON.stringify(ids)}`);
  o.idKind = ids as IdKind;
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
  o.producerSessions = values["producer-sessions"] === true || env.BENCH_PRODUCER_SESSIONS === "1";
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

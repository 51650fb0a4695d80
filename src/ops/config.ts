import fs from "node:fs";
import path from "node:path";
import typia, { type tags } from "typia";
import type { StreamDefinition, UnknownFields } from "../shared/stream-definition";
import { everyMs, type SourceConfig } from "./source-config";

type Int = number & tags.Type<"int32">;
type Port = Int & tags.Minimum<0> & tags.Maximum<65535>;

export interface WsConfig {
  /** Frames a producer may have unacknowledged at once. */
  window: Int & tags.Minimum<1> & tags.Maximum<1024>;
  maxFrameBytes: Int & tags.Minimum<1024>;
  idleTimeoutSeconds: Int & tags.Minimum<8> & tags.Maximum<960>;
}

/** Per-deployment settings of one stream, overriding its definition. */
export interface StreamSettings {
  /** Refuse records with fields their type does not declare, or ignore (drop) those fields. */
  unknownFields?: UnknownFields;
}

/**
 * Reading records and dead letters back (docs/http-api.md#reading-back): a small pool of its own on the
 * front thread, so reads never take a connection ingest or the health probe needs.
 */
export interface ReadsConfig {
  /** Connections of the read pool. */
  poolSize: Int & tags.Minimum<1> & tags.Maximum<64>;
  /** A read query running longer is cancelled (PostgreSQL statement_timeout) and answered 503. */
  statementTimeoutMs: Int & tags.Minimum<100> & tags.Maximum<600000>;
  /** Reads waiting for a connection of the pool; one more is refused at once with 503. */
  maxWaiting: Int & tags.Minimum<0> & tags.Maximum<10000>;
}

export interface CorsConfig {
  /**
   * Browser origins (`scheme://host[:port]`) whose pages may call the API and open WebSockets, or "*" for
   * any origin; empty: no CORS headers at all (docs/http-api.md#cors).
   */
  allowedOrigins: string[] | "*";
}

export interface IngestdConfig {
  host: string & tags.MinLength<1>;
  port: Port;
  /** null: run an embedded PostgreSQL under dataDir. */
  databaseUrl: (string & tags.MinLength<1>) | null;
  dataDir: string & tags.MinLength<1>;
  dbSchema: string & tags.Pattern<"^[a-z_][a-z0-9_]{0,62}$">;
  workers: Int & tags.Minimum<1> & tags.Maximum<64>;
  ringMb: Int & tags.Minimum<1> & tags.Maximum<4096>;
  batchSize: Int & tags.Minimum<1> & tags.Maximum<1000000>;
  batchTimeoutMs: Int & tags.Minimum<0> & tags.Maximum<60000>;
  maxBatchMemoryMb: Int & tags.Minimum<1> & tags.Maximum<1024>;
  /**
   * Body megabytes each worker is given at once: it holds them parsed and encoded until their group commit
   * (its heap grows with them); further bodies wait in the ring, ordered by priority. Bounds memory.
   */
  workerBacklogMb: Int & tags.Minimum<1> & tags.Maximum<4096>;
  /**
   * Each worker's V8 young generation, in megabytes (Piscina resourceLimits.maxYoungGenerationSizeMb: two
   * semi-spaces and a third for new large objects). Under full load V8 grows it to its ceiling; a smaller one
   * scavenges more often (docs/performance.md#memory).
   */
  workerYoungGenerationMb: Int & tags.Minimum<3> & tags.Maximum<1024>;
  maxBodyMb: Int & tags.Minimum<1> & tags.Maximum<1024>;
  /** How long a request may wait for ring space (or a database) before 503 / close 1013. */
  overloadDeadlineMs: Int & tags.Minimum<1>;
  retryAfterSeconds: Int & tags.Minimum<1>;
  stopTimeoutMs: Int & tags.Minimum<100>;
  /**
   * On SIGTERM, how long `/health` answers 503 "draining" while everything else still serves, before the
   * daemon stops listening and drains: a load balancer's health check takes it out meanwhile
   * (docs/operations.md#several-daemons-behind-a-load-balancer). 0 (the default) drains at once.
   */
  drainDelayMs: Int & tags.Minimum<0> & tags.Maximum<600000>;
  maxErrorsReported: Int & tags.Minimum<1>;
  ws: WsConfig;
  cors: CorsConfig;
  reads: ReadsConfig;
  apiKeysFile: (string & tags.MinLength<1>) | null;
  tlsCert: (string & tags.MinLength<1>) | null;
  tlsKey: (string & tags.MinLength<1>) | null;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace";
  hlogPath: (string & tags.MinLength<1>) | null;
  latencyIntervalMs: Int & tags.Minimum<100>;
  /** Months of event partitions to keep; null keeps everything (retention off). */
  retentionMonths: (Int & tags.Minimum<1> & tags.Maximum<1200>) | null;
  /**
   * Hours an id is remembered for deduplication after it was first stored (docs/storage.md#deduplication);
   * the id state holds about this long's ids, whatever the tables' retention.
   */
  dedupWindowHours: Int & tags.Minimum<1> & tags.Maximum<8760>;
  /**
   * MiB of memory the id state's filters may hold in all (one copy per daemon, docs/storage.md#filter-memory):
   * past it the oldest are folded to half their size, then left out.
   */
  dedupFilterMb: Int & tags.Minimum<1> & tags.Maximum<65536>;
  /** Days of `ingest_batches` rows (batch status answers) kept; dropped by day partition. */
  batchesRetentionDays: Int & tags.Minimum<1> & tags.Maximum<3650>;
  /** Days of `ingest_dead_letters` rows kept; dropped by day partition. */
  deadLettersRetentionDays: Int & tags.Minimum<1> & tags.Maximum<3650>;
  /** How often partitions are created ahead and retention applied. */
  partitionCheckMinutes: Int & tags.Minimum<1> & tags.Maximum<1440>;
  /**
   * Per-stream deduplication by the stream's id field, overriding the stream's default
   * (on for events and product_events).
   */
  deduplicate: Record<string, boolean>;
  /** Per-stream overrides by stream name, e.g. `{"events": {"unknownFields": "ignore"}}`. */
  streams?: Record<string, StreamSettings>;
  /** Pull sources by name (docs/sources.md); absent or empty: nothing is pulled. */
  sources?: Record<string, SourceConfig>;
  /**
   * Producer sessions idle this many days lose their ingest_producers row (a bounded delete every ten
   * minutes); null keeps them.
   */
  producerRetentionDays: (Int & tags.Minimum<1> & tags.Maximum<36500>) | null;
}

/**
 * Settings added after the first release, with the value they take when a config file written before them
 * leaves them out: an upgrade must not refuse to start over a file that was valid (docs/operations.md#configuration).
 */
const ADDED_SETTINGS: Partial<IngestdConfig> = {
  cors: { allowedOrigins: [] },
  reads: { poolSize: 4, statementTimeoutMs: 5000, maxWaiting: 64 },
  dedupWindowHours: 168,
  dedupFilterMb: 128,
  batchesRetentionDays: 7,
  deadLettersRetentionDays: 30,
  producerRetentionDays: 30,
  drainDelayMs: 0,
  workerYoungGenerationMb: 12,
};

/** Exit status for a configuration error (sysexits.h EX_CONFIG). */
export const EX_CONFIG = 78;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const validateConfig = typia.createValidateEquals<IngestdConfig>();

type EnvKind = "string" | "int" | "nullable";
/** Environment overrides (docs/operations.md#configuration), mapped onto config paths. */
export const ENV_OVERRIDES: ReadonlyArray<[env: string, path: string, kind: EnvKind]> = [
  ["DATABASE_URL", "databaseUrl", "nullable"],
  ["HOST", "host", "string"],
  ["PORT", "port", "int"],
  ["WORKERS", "workers", "int"],
  ["RING_MB", "ringMb", "int"],
  ["BATCH_SIZE", "batchSize", "int"],
  ["BATCH_TIMEOUT_MS", "batchTimeoutMs", "int"],
  ["MAX_BATCH_MEMORY_MB", "maxBatchMemoryMb", "int"],
  ["WORKER_BACKLOG_MB", "workerBacklogMb", "int"],
  ["WORKER_YOUNG_GENERATION_MB", "workerYoungGenerationMb", "int"],
  ["MAX_BODY_MB", "maxBodyMb", "int"],
  ["API_KEYS_FILE", "apiKeysFile", "nullable"],
  ["TLS_CERT", "tlsCert", "nullable"],
  ["TLS_KEY", "tlsKey", "nullable"],
  ["LOG_LEVEL", "logLevel", "string"],
  ["HLOG_PATH", "hlogPath", "nullable"],
  ["DATA_DIR", "dataDir", "string"],
  ["OVERLOAD_DEADLINE_MS", "overloadDeadlineMs", "int"],
  ["STOP_TIMEOUT_MS", "stopTimeoutMs", "int"],
  ["DRAIN_DELAY_MS", "drainDelayMs", "int"],
  ["WS_WINDOW", "ws.window", "int"],
  ["WS_MAX_FRAME_BYTES", "ws.maxFrameBytes", "int"],
  ["RETENTION_MONTHS", "retentionMonths", "int"],
  ["DEDUP_WINDOW_HOURS", "dedupWindowHours", "int"],
  ["DEDUP_FILTER_MB", "dedupFilterMb", "int"],
  ["BATCHES_RETENTION_DAYS", "batchesRetentionDays", "int"],
  ["DEAD_LETTERS_RETENTION_DAYS", "deadLettersRetentionDays", "int"],
  ["PRODUCER_RETENTION_DAYS", "producerRetentionDays", "int"],
];

export const DEFAULT_CONFIG_PATH = path.resolve(__dirname, "../../../config/ingestd.json");

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.INGESTD_CONFIG ? path.resolve(env.INGESTD_CONFIG) : DEFAULT_CONFIG_PATH;
}

/** Reads, overrides and validates the configuration; throws ConfigError naming the field. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, file = configPath(env)): IngestdConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}${jsonErrorPosition(file, err)}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`config file ${file}: expected a JSON object`);
  }
  const config = raw as Record<string, unknown>;
  for (const [key, value] of Object.entries(ADDED_SETTINGS)) if (!(key in config)) config[key] = structuredClone(value);
  for (const [name, key, kind] of ENV_OVERRIDES) {
    const value = env[name];
    if (value === undefined || value === "") continue;
    setPath(config, key, parseEnv(name, value, kind));
  }
  const result = validateConfig(config);
  if (!result.success) {
    const lines = result.errors.map((e) => {
      const field = e.path.replace(/^\$input\.?/, "");
      const source = ENV_OVERRIDES.find(([, key]) => key === field);
      const via = source && env[source[0]] ? ` (from ${source[0]})` : "";
      // typia reports an unknown key as "expected undefined": say what it means to the operator.
      if (e.expected === "undefined") return `${field}: unknown field (not part of the configuration)`;
      if (e.value === undefined) return `${field}: missing, expected ${e.expected}`;
      return `${field || "(root)"}${via}: expected ${e.expected}, got ${JSON.stringify(e.value)}`;
    });
    throw new ConfigError(`invalid configuration in ${file}:\n  ${lines.join("\n  ")}`);
  }
  const cfg = result.data;
  if (cfg.ringMb < cfg.maxBodyMb) {
    throw new ConfigError(`ringMb: must be at least maxBodyMb (${cfg.maxBodyMb}), got ${cfg.ringMb}`);
  }
  if ((cfg.tlsCert === null) !== (cfg.tlsKey === null)) {
    throw new ConfigError(`tlsCert / tlsKey: set both or neither`);
  }
  for (const key of ["tlsCert", "tlsKey", "apiKeysFile"] as const) {
    const p = cfg[key];
    if (p !== null && !fs.existsSync(p)) throw new ConfigError(`${key}: file not found: ${p}`);
  }
  if (cfg.cors.allowedOrigins !== "*") {
    for (const [i, origin] of cfg.cors.allowedOrigins.entries()) {
      if (!isOrigin(origin)) {
        throw new ConfigError(
          `cors.allowedOrigins[${i}]: expected an origin like "https://app.example.com" (scheme, host, optional port; no path), got ${JSON.stringify(origin)}`,
        );
      }
    }
  }
  for (const [name, source] of Object.entries(cfg.sources ?? {})) checkSource(name, source);
  if (cfg.hlogPath !== null && !fs.existsSync(path.dirname(path.resolve(cfg.hlogPath)))) {
    throw new ConfigError(`hlogPath: directory not found: ${path.dirname(path.resolve(cfg.hlogPath))}`);
  }
  return cfg;
}

/** What typia cannot say of a source: names, URL, what each kind needs. The stream is checked at start. */
function checkSource(name: string, source: SourceConfig): void {
  const at = `sources.${name}`;
  if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(name))
    throw new ConfigError(`${at}: a source name is lowercase letters, digits, _ and - (at most 63)`);
  let url: URL;
  try {
    url = new URL(source.url);
  } catch {
    throw new ConfigError(`${at}.url: not a URL: ${JSON.stringify(source.url)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ConfigError(`${at}.url: expected http: or https:, got ${url.protocol}`);
  if (source.kind === "graphql" && source.query === undefined)
    throw new ConfigError(`${at}.query: a graphql source needs its query document`);
  if (source.kind === "rest" && source.query !== undefined) throw new ConfigError(`${at}.query: only for kind "graphql"`);
  if (everyMs(source.every) < 1000) throw new ConfigError(`${at}.every: at least 1s, got ${source.every}`);
  if (source.kind === "graphql" && source.pagination?.type === "link") {
    throw new ConfigError(`${at}.pagination: "link" follows Link headers of REST APIs; use "cursor" for GraphQL`);
  }
  for (const [header, value] of Object.entries(source.headers ?? {})) {
    for (const m of value.matchAll(/\$\{([^}]*)\}/g)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(m[1]))
        throw new ConfigError(`${at}.headers.${header}: \${${m[1]}} is not an environment variable name`);
    }
  }
}

/** A browser origin as it appears in an `Origin` header: what URL.origin gives back unchanged. */
function isOrigin(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === "http:" || url.protocol === "https:") && url.origin === value;
  } catch {
    return false;
  }
}

/** " (line L, column C)" for a JSON syntax error that reports a character position. */
function jsonErrorPosition(file: string, err: unknown): string {
  const match = /position (\d+)/.exec((err as Error).message);
  if (!(err instanceof SyntaxError) || !match) return "";
  const before = fs.readFileSync(file, "utf8").slice(0, Number(match[1]));
  const lines = before.split("\n");
  return ` (line ${lines.length}, column ${lines[lines.length - 1].length + 1})`;
}

function parseEnv(name: string, value: string, kind: EnvKind): unknown {
  if (kind === "int") {
    if (!/^-?\d+$/.test(value.trim())) throw new ConfigError(`${name}: expected an integer, got ${JSON.stringify(value)}`);
    return Number(value);
  }
  return value;
}

function setPath(target: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split(".");
  let node = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== "object" || node[part] === null) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

/** Streams that deduplicate: each stream's default, overridden by the `deduplicate` setting. */
export function dedupStreams(config: IngestdConfig, streams: readonly StreamDefinition[]): string[] {
  return streams.filter((s) => s.dedupKey !== undefined && (config.deduplicate[s.name] ?? s.dedupByDefault ?? false)).map((s) => s.name);
}

/**
 * Streams that ignore (drop) unknown fields: each stream's `unknownFields`, overridden by
 * `streams.<name>.unknownFields`. Throws ConfigError for an unknown stream name, or for a stream told to
 * ignore them that has no `validateIgnoringUnknown` compiled.
 */
export function ignoreUnknownStreams(config: IngestdConfig, streams: readonly StreamDefinition[]): string[] {
  const settings = config.streams ?? {};
  for (const name of Object.keys(settings)) {
    if (!streams.some((s) => s.name === name)) {
      throw new ConfigError(`streams.${name}: no such stream (streams: ${streams.map((s) => s.name).join(", ")})`);
    }
  }
  const ignoring: string[] = [];
  for (const s of streams) {
    if ((settings[s.name]?.unknownFields ?? s.unknownFields ?? "refuse") !== "ignore") continue;
    if (s.validateIgnoringUnknown === undefined) {
      throw new ConfigError(
        `streams.${s.name}.unknownFields: "ignore" needs validateIgnoringUnknown in the stream's definition (config/streams/)`,
      );
    }
    ignoring.push(s.name);
  }
  return ignoring;
}

/**
 * Checks each pull source's stream: it must exist and take JSON records (pulled records reach the workers
 * as NDJSON). Throws ConfigError naming the source.
 */
export function sourceStreams(config: IngestdConfig, streams: readonly StreamDefinition[]): void {
  for (const [name, source] of Object.entries(config.sources ?? {})) {
    const target = streams.find((s) => s.name === source.stream);
    if (!target) {
      throw new ConfigError(
        `sources.${name}.stream: no such stream ${JSON.stringify(source.stream)} (streams: ${streams.map((s) => s.name).join(", ")})`,
      );
    }
    if (!target.formats.includes("ndjson")) {
      throw new ConfigError(
        `sources.${name}.stream: stream ${target.name} takes ${target.formats.join(", ")} only; a source needs a stream of JSON records`,
      );
    }
  }
}

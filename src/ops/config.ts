import fs from "node:fs";
import path from "node:path";
import typia, { type tags } from "typia";
import type { StreamDefinition } from "../shared/stream-definition";

type Int = number & tags.Type<"int32">;
type Port = Int & tags.Minimum<0> & tags.Maximum<65535>;

export interface WsConfig {
  /** Frames a producer may have unacknowledged at once. */
  window: Int & tags.Minimum<1> & tags.Maximum<1024>;
  maxFrameBytes: Int & tags.Minimum<1024>;
  idleTimeoutSeconds: Int & tags.Minimum<8> & tags.Maximum<960>;
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
  maxBodyMb: Int & tags.Minimum<1> & tags.Maximum<1024>;
  /** How long a request may wait for ring space (or a database) before 503 / close 1013. */
  overloadDeadlineMs: Int & tags.Minimum<1>;
  retryAfterSeconds: Int & tags.Minimum<1>;
  stopTimeoutMs: Int & tags.Minimum<100>;
  maxErrorsReported: Int & tags.Minimum<1>;
  ws: WsConfig;
  apiKeysFile: (string & tags.MinLength<1>) | null;
  tlsCert: (string & tags.MinLength<1>) | null;
  tlsKey: (string & tags.MinLength<1>) | null;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace";
  hlogPath: (string & tags.MinLength<1>) | null;
  latencyIntervalMs: Int & tags.Minimum<100>;
  /** Months of event partitions to keep; null keeps everything (retention off). */
  retentionMonths: (Int & tags.Minimum<1> & tags.Maximum<1200>) | null;
  /** How often partitions are created ahead and retention applied. */
  partitionCheckMinutes: Int & tags.Minimum<1> & tags.Maximum<1440>;
  /**
   * Per-stream deduplication by the stream's id field, overriding the stream's default
   * (on for events and product_events).
   */
  deduplicate: Record<string, boolean>;
}

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
const ENV_OVERRIDES: ReadonlyArray<[env: string, path: string, kind: EnvKind]> = [
  ["DATABASE_URL", "databaseUrl", "nullable"],
  ["HOST", "host", "string"],
  ["PORT", "port", "int"],
  ["WORKERS", "workers", "int"],
  ["RING_MB", "ringMb", "int"],
  ["BATCH_SIZE", "batchSize", "int"],
  ["BATCH_TIMEOUT_MS", "batchTimeoutMs", "int"],
  ["MAX_BATCH_MEMORY_MB", "maxBatchMemoryMb", "int"],
  ["WORKER_BACKLOG_MB", "workerBacklogMb", "int"],
  ["MAX_BODY_MB", "maxBodyMb", "int"],
  ["API_KEYS_FILE", "apiKeysFile", "nullable"],
  ["TLS_CERT", "tlsCert", "nullable"],
  ["TLS_KEY", "tlsKey", "nullable"],
  ["LOG_LEVEL", "logLevel", "string"],
  ["HLOG_PATH", "hlogPath", "nullable"],
  ["DATA_DIR", "dataDir", "string"],
  ["OVERLOAD_DEADLINE_MS", "overloadDeadlineMs", "int"],
  ["STOP_TIMEOUT_MS", "stopTimeoutMs", "int"],
  ["WS_WINDOW", "ws.window", "int"],
  ["WS_MAX_FRAME_BYTES", "ws.maxFrameBytes", "int"],
  ["RETENTION_MONTHS", "retentionMonths", "int"],
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
  if (cfg.hlogPath !== null && !fs.existsSync(path.dirname(path.resolve(cfg.hlogPath)))) {
    throw new ConfigError(`hlogPath: directory not found: ${path.dirname(path.resolve(cfg.hlogPath))}`);
  }
  return cfg;
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

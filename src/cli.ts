#!/usr/bin/env node
/**
 * The `ingestd` command: serve, top, check-config, partitions, bench.
 * Exit statuses: 0 ok, 1 runtime failure, 64 usage error, 69 embedded database unavailable, 78 configuration
 * error.
 */
import { parseArgs } from "node:util";
import { ConfigError, EX_CONFIG, loadConfig, configPath, type IngestdConfig } from "./config";
import { EmbeddedDbError, EX_UNAVAILABLE } from "./embedded-db";
import { createLogger } from "./logger";
import { notifySystemd, takeNotifySocket } from "./sd-notify";

const EX_USAGE = 64;

class UsageError extends Error {}

const HELP = `ingestd — high-throughput event ingestion daemon

Usage: ingestd <command> [options]

Commands:
  serve                     run the daemon (the default command)
  top [--url URL]           live view of a running daemon: events/s, p50/p95/p99/max per stage and
      [--interval MS]       stream, ring fill, tasks in flight, connections, database state; q quits.
      [--once]              URL defaults to http://HOST:PORT from the configuration
  check-config              validate the configuration (file + environment) and exit: 0 ok, 78 invalid
  partitions list           monthly partitions of the event tables, with row counts
  partitions create [YYYY-MM ...]   create partitions (default: this month and the next)
  partitions drop [--older-than N]  drop partitions older than N months (default: retentionMonths)
  bench [options]           the performance benchmark (see \`ingestd bench --help\`)
  keys new --id ID          mint an API key (printed once) and its keys-file entry;
      --streams S1,S2       see \`ingestd keys --help\`
      [--rate N] [--burst N]
  --help, -h                this text

Configuration: config/ingestd.json (or the file in INGESTD_CONFIG), overridden by DATABASE_URL, HOST, PORT,
WORKERS, RING_MB, BATCH_SIZE, BATCH_TIMEOUT_MS, MAX_BATCH_MEMORY_MB, MAX_BODY_MB, API_KEYS_FILE,
TLS_CERT, TLS_KEY, LOG_LEVEL, HLOG_PATH. Without DATABASE_URL an embedded PostgreSQL runs under ./.data/.

Endpoints: /health, /stats, /metrics (Prometheus), /v1/latency (HDR percentiles).
Exit status: 0 ok, 1 failure, 64 usage error, 69 the embedded PostgreSQL cannot start (the message says
why; DATABASE_URL avoids it), 78 configuration error.
`;

async function serve(argv: string[]): Promise<void> {
  parseArgs({ args: argv, options: {} }); // serve takes no options: reject typos rather than ignore them
  const config = loadConfig();
  const log = createLogger(config.logLevel);
  // Before anything is spawned: the embedded PostgreSQL must not inherit systemd's notify socket.
  takeNotifySocket();
  // Loaded here, not at the top: check-config and --help must work where the native binary does not.
  const { startServer } = require("./server") as typeof import("./server");
  // Handlers go in before the server starts: a supervisor may send SIGTERM the moment it reads "listening",
  // and a signal that lands before process.on() would kill the daemon with the default action mid-start.
  let server: Awaited<ReturnType<typeof startServer>> | null = null;
  let pendingSignal: string | null = null;
  let stopping = false;
  const shutdown = (signal: string) => {
    if (server === null) {
      pendingSignal ??= signal;
      return;
    }
    if (stopping) {
      // A second Ctrl-C is an operator who will not wait; a repeated SIGTERM (supervisors may send one to
      // the whole process group) must not cut the drain short.
      if (signal === "SIGINT") {
        log.warn({ signal }, "second interrupt: exiting without waiting for the drain");
        process.exit(1);
      }
      return;
    }
    stopping = true;
    log.info({ signal }, "shutting down");
    void notifySystemd(["STOPPING=1", "STATUS=draining"], log);
    // The drain is bounded by the stop timeout even when a commit never returns (a hung database): past
    // it, exit without the rest. Nothing more is acknowledged, so this is as safe as kill -9.
    setTimeout(() => {
      log.error({ stop_timeout_ms: config.stopTimeoutMs }, "drain did not finish within the stop timeout; exiting, unanswered work was not acknowledged");
      log.flush();
      process.exit(1);
    }, config.stopTimeoutMs).unref();
    server.stop().then(
      () => {
        log.flush();
        process.exit(0);
      },
      (err: Error) => {
        log.error({ err: err.message }, "shutdown failed");
        log.flush();
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  // API keys without a restart (a bad file keeps the old keys; see src/auth.ts); HLOG_PATH after logrotate.
  process.on("SIGHUP", () => server?.reload());
  server = await startServer(config, log);
  void notifySystemd(["READY=1", `STATUS=listening on ${config.host}:${server.port}`], log);
  if (pendingSignal !== null) shutdown(pendingSignal);
}

function checkConfig(argv: string[]): void {
  parseArgs({ args: argv, options: {} });
  const config = loadConfig();
  process.stdout.write(`configuration OK: ${configPath()}\n`);
  process.stdout.write(`  listen ${config.host}:${config.port}, ${config.workers} workers, ring ${config.ringMb} MiB, ` +
    `batch ${config.batchSize} rows / ${config.maxBatchMemoryMb} MiB / ${config.batchTimeoutMs} ms\n`);
  process.stdout.write(`  database: ${config.databaseUrl === null ? `embedded under ${config.dataDir}` : "DATABASE_URL"}\n`);
  if (config.hlogPath !== null) process.stdout.write(`  latency log: ${config.hlogPath}\n`);
}

/** Where the daemon of this configuration listens, as a URL a local client can reach. */
function localUrl(config: IngestdConfig): string {
  const host = config.host === "0.0.0.0" ? "127.0.0.1" : config.host === "::" ? "[::1]" : config.host.includes(":") ? `[${config.host}]` : config.host;
  return `${config.tlsCert ? "https" : "http"}://${host}:${config.port}`;
}

async function top(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { url: { type: "string" }, interval: { type: "string" }, once: { type: "boolean" } },
  });
  const url = values.url ?? localUrl(loadConfig());
  if (!/^https?:\/\/[^/]+/.test(url)) throw new UsageError(`--url: expected http://host:port, got ${JSON.stringify(url)}`);
  const intervalMs = values.interval === undefined ? 1000 : Number(values.interval);
  if (!Number.isInteger(intervalMs) || intervalMs < 100) throw new UsageError(`--interval: expected milliseconds >= 100, got ${JSON.stringify(values.interval)}`);
  const { runTop } = require("./top") as typeof import("./top");
  return runTop({ url, intervalMs, once: values.once === true, input: process.stdin, output: process.stdout });
}

async function partitions(argv: string[]): Promise<void> {
  const { runPartitions, PARTITIONS_HELP, UsageError: PartitionsUsage } = require("./partitions-command") as typeof import("./partitions-command");
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(PARTITIONS_HELP);
    return;
  }
  try {
    await runPartitions(loadConfig(), argv, process.stdout);
  } catch (err) {
    if (err instanceof PartitionsUsage) throw new UsageError(`${err.message}\n\n${PARTITIONS_HELP}`);
    throw err;
  }
}

async function bench(argv: string[]): Promise<number> {
  // Loaded at call time so the daemon never loads the bench (dist/bench/run.js, compiled beside src/).
  const { runBench } = require("../bench/run") as typeof import("../bench/run");
  return runBench(argv);
}

async function main(argv: string[]): Promise<void> {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(HELP);
    return;
  }
  if (command === "--version" || command === "-V") {
    process.stdout.write(`${require("../../package.json").version}\n`);
    return;
  }
  if ((rest.includes("--help") || rest.includes("-h")) && command !== "bench" && command !== "partitions" && command !== "keys") {
    process.stdout.write(HELP);
    return;
  }
  switch (command) {
    case "serve":
      return serve(rest);
    case "check-config":
      return checkConfig(rest);
    case "top": {
      const code = await top(rest);
      process.exit(code);
    }
    case "partitions":
      await partitions(rest);
      process.exit(0); // a pg pool or an embedded cluster's handles must not keep a finished command alive
    case "bench": {
      process.exit(await bench(rest));
    }
    case "keys": {
      // Security: mint API keys (it has its own --help, hence excluded from the generic one above).
      const keys = require("./api-keys") as typeof import("./api-keys");
      try {
        process.exit(keys.runKeysCommand(rest, process.stdout, keys.streamCatalog()));
      } catch (err) {
        if (err instanceof keys.ApiKeysError) throw new UsageError(err.message);
        throw err;
      }
    }
    default:
      throw new UsageError(`unknown command "${command}"\n\n${HELP}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`ingestd: ${err.message}\n`);
    process.exit(EX_CONFIG);
  }
  // The database cannot start here (no postgres user, read-only disk, port taken): the cause and the fix
  // in one line; a stack trace would only bury them.
  if (err instanceof EmbeddedDbError) {
    process.stderr.write(`ingestd: ${err.message}\n`);
    process.exit(EX_UNAVAILABLE);
  }
  // parseArgs reports unknown options and missing values with these codes.
  const code = (err as { code?: string })?.code;
  if (err instanceof UsageError || code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" || code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" || code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    process.stderr.write(`ingestd: ${(err as Error).message}\n`);
    process.exit(EX_USAGE);
  }
  process.stderr.write(`ingestd: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});

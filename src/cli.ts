#!/usr/bin/env node
/**
 * The `ingestd` command: serve, check-config (and, as they land: top, partitions, bench).
 * Exit statuses: 0 ok, 1 runtime failure, 64 usage error, 78 configuration error.
 */
import { parseArgs } from "node:util";
import { ConfigError, EX_CONFIG, loadConfig, configPath } from "./config";
import { createLogger } from "./logger";

const EX_USAGE = 64;

const HELP = `ingestd — high-throughput event ingestion daemon

Usage: ingestd <command> [options]

Commands:
  serve           run the daemon (default)
  check-config    validate config/ingestd.json with the environment overrides, then exit
  --help          this text

Configuration: config/ingestd.json (or INGESTD_CONFIG), overridden by DATABASE_URL, HOST, PORT,
WORKERS, RING_MB, BATCH_SIZE, BATCH_TIMEOUT_MS, MAX_BATCH_MEMORY_MB, MAX_BODY_MB, API_KEYS_FILE,
TLS_CERT, TLS_KEY, LOG_LEVEL, HLOG_PATH. Without DATABASE_URL an embedded PostgreSQL runs under ./.data/.
`;

async function serve(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config.logLevel);
  // Loaded here, not at the top: check-config and --help must work where the native binary does not.
  const { startServer } = require("./server") as typeof import("./server");
  const server = await startServer(config, log);
  let stopping = false;
  const shutdown = (signal: string) => {
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
}

function checkConfig(): void {
  const config = loadConfig();
  process.stdout.write(`configuration OK: ${configPath()}\n`);
  process.stdout.write(`  listen ${config.host}:${config.port}, ${config.workers} workers, ring ${config.ringMb} MiB, ` +
    `batch ${config.batchSize} rows / ${config.maxBatchMemoryMb} MiB / ${config.batchTimeoutMs} ms\n`);
  process.stdout.write(`  database: ${config.databaseUrl === null ? `embedded under ${config.dataDir}` : "DATABASE_URL"}\n`);
}

async function main(argv: string[]): Promise<void> {
  const { positionals, values } = parseArgs({ args: argv, allowPositionals: true, strict: false, options: { help: { type: "boolean", short: "h" } } });
  const command = positionals[0] ?? "serve";
  if (values.help || command === "help") {
    process.stdout.write(HELP);
    return;
  }
  switch (command) {
    case "serve":
      return serve();
    case "check-config":
      return checkConfig();
    default:
      process.stderr.write(`ingestd: unknown command "${command}"\n\n${HELP}`);
      process.exit(EX_USAGE);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`ingestd: ${err.message}\n`);
    process.exit(EX_CONFIG);
  }
  process.stderr.write(`ingestd: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});

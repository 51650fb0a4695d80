#!/usr/bin/env node
/**
 * The `ingestd` command: picks the command, runs it from src/commands/, and maps errors to exit statuses:
 * 0 ok, 1 runtime failure, 64 usage error, 69 embedded database unavailable, 78 configuration error.
 */
import { ConfigError, EX_CONFIG } from "./ops/config";
import { VERSION } from "./ops/version";
import { EX_USAGE, UsageError } from "./commands/usage-error";
import { EmbeddedDbError, EX_UNAVAILABLE } from "./storage/embedded-db";

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
  send --url ws://HOST:PORT send NDJSON / JSON lines (text lines; --stream tpch: TPC-H lines) from
      --stream NAME [FILE]  FILE or stdin over a producer session, each stored once;
                            see \`ingestd send --help\`
  sources list | run NAME   pull sources of the running daemon: state, last and next run, watermark;
                            run one now (see \`ingestd sources --help\`)
  --help, -h                this text

Configuration: config/ingestd.json (or the file in INGESTD_CONFIG), overridden by DATABASE_URL, HOST, PORT,
WORKERS, RING_MB, BATCH_SIZE, BATCH_TIMEOUT_MS, MAX_BATCH_MEMORY_MB, MAX_BODY_MB, API_KEYS_FILE,
TLS_CERT, TLS_KEY, LOG_LEVEL, HLOG_PATH. Without DATABASE_URL an embedded PostgreSQL runs under ./.data/.

Endpoints: /health, /stats, /metrics (Prometheus), /v1/latency (HDR percentiles).
Exit status: 0 ok, 1 failure, 64 usage error, 69 the embedded PostgreSQL cannot start (the message says
why; DATABASE_URL avoids it), 78 configuration error.
`;

/** A command resolves to its exit status, or to nothing when it keeps running (serve). */
type Command = (argv: string[]) => Promise<number | void>;

// Each command module is required only when run: check-config and --help must work where the native uWS
// binary (behind serve) does not, and no command pays for another's modules (pg, the typia validators).
const COMMANDS: Record<string, () => Command> = {
  serve: () => (require("./commands/serve") as typeof import("./commands/serve")).serveCommand,
  top: () => (require("./commands/top") as typeof import("./commands/top")).topCommand,
  "check-config": () => (require("./commands/check-config") as typeof import("./commands/check-config")).checkConfigCommand,
  partitions: () => (require("./commands/partitions") as typeof import("./commands/partitions")).partitionsCommand,
  bench: () => (require("./commands/bench") as typeof import("./commands/bench")).benchCommand,
  keys: () => (require("./commands/keys") as typeof import("./commands/keys")).keysCommand,
  send: () => (require("./commands/send") as typeof import("./commands/send")).sendCommand,
  sources: () => (require("./commands/sources") as typeof import("./commands/sources")).sourcesCommand,
};

/** Commands that answer --help themselves; the others get the text above. */
const OWN_HELP = new Set(["bench", "partitions", "keys", "send", "sources"]);

async function main(argv: string[]): Promise<void> {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(HELP);
    return;
  }
  if (command === "--version" || command === "-V") {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  if ((rest.includes("--help") || rest.includes("-h")) && !OWN_HELP.has(command)) {
    process.stdout.write(HELP);
    return;
  }
  const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (load === undefined) throw new UsageError(`unknown command "${command}"\n\n${HELP}`);
  const status = await load()(rest);
  // Exit rather than wait for the event loop: a pg pool or an embedded cluster's handles must not keep a
  // finished command alive.
  if (status !== undefined) process.exit(status);
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
  if (
    err instanceof UsageError ||
    code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" ||
    code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" ||
    code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL"
  ) {
    process.stderr.write(`ingestd: ${(err as Error).message}\n`);
    process.exit(EX_USAGE);
  }
  process.stderr.write(`ingestd: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});

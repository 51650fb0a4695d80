/**
 * `ingestd partitions list | create [YYYY-MM ...] | drop --older-than N`: the monthly partitions of
 * src/storage/partitions.ts by hand. It talks to DATABASE_URL, or to the embedded cluster under dataDir: the running
 * daemon's (found through the credentials file the cluster keeps there) or, when none runs, one it starts
 * for the command and stops again.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { streams } from "../../config/streams";
import type { IngestdConfig } from "../ops/config";
import { loadCheckedConfig } from "../security/checked-config";
import { addMonths, createPartitions, dropPartitionsOlderThan, listPartitions, monthOf, parseMonth } from "../storage/partitions";
import { UsageError } from "./usage-error";

export const PARTITIONS_HELP = `Usage: ingestd partitions <list | create [--month YYYY-MM ...] | drop [--older-than MONTHS]>

  list                       partitions of every partitioned stream, with row counts
  create [--month YYYY-MM]   create the months' partitions (default: this month and the next)
  drop [--older-than N]      drop partitions ending before the month N months ago
                             (default: retentionMonths / RETENTION_MONTHS)
`;

async function withDatabase<T>(config: IngestdConfig, work: (client: pg.Client) => Promise<T>): Promise<T> {
  let url = config.databaseUrl;
  let stopEmbedded: (() => Promise<void>) | null = null;
  if (url === null) {
    const dir = path.resolve(config.dataDir);
    const { runningEmbeddedDbUrl, startEmbeddedDb } = require("../storage/embedded-db") as typeof import("../storage/embedded-db");
    // A running daemon's cluster is only connected to, never stopped; otherwise start it for this command.
    url = runningEmbeddedDbUrl(dir);
    if (url === null) {
      const db = await startEmbeddedDb({ dir });
      url = db.url;
      stopEmbedded = () => db.stop();
    }
  }
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000, application_name: "ingestd partitions" });
  try {
    await client.connect();
    return await work(client);
  } finally {
    await client.end().catch(() => undefined);
    if (stopEmbedded) await stopEmbedded();
  }
}

export async function runPartitions(config: IngestdConfig, argv: string[], out: NodeJS.WritableStream): Promise<void> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { "older-than": { type: "string" }, month: { type: "string", multiple: true } },
  });
  const [action, ...rest] = positionals;
  const schema = config.dbSchema;
  switch (action) {
    case "list":
      return withDatabase(config, async (client) => {
        const parts = await listPartitions(client, schema, streams);
        if (parts.length === 0) out.write("no partitions (no partitioned stream table yet: has `ingestd serve` run?)\n");
        for (const p of parts)
          out.write(`${p.stream.padEnd(20)} ${p.partition.padEnd(36)} ${(p.month ?? "default").padEnd(8)} ${p.rows} rows\n`);
      });
    case "create": {
      let months: ReturnType<typeof parseMonth>[];
      try {
        // `create --month YYYY-MM` (as issue 4 spells it) and `create YYYY-MM ...` both work.
        const named = [...(values.month ?? []), ...rest];
        months = named.length > 0 ? named.map(parseMonth) : [monthOf(new Date()), addMonths(monthOf(new Date()), 1)];
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      return withDatabase(config, async (client) => {
        const created = await createPartitions(client, schema, streams, months);
        out.write(created.length > 0 ? `created ${created.join(", ")}\n` : "nothing to create: the partitions exist\n");
      });
    }
    case "drop": {
      const raw = values["older-than"] ?? (config.retentionMonths === null ? undefined : String(config.retentionMonths));
      if (raw === undefined) throw new UsageError("drop needs --older-than MONTHS (or retentionMonths in the configuration)");
      const months = Number(raw);
      if (!Number.isInteger(months) || months < 1)
        throw new UsageError(`--older-than: expected a whole number of months >= 1, got ${JSON.stringify(raw)}`);
      return withDatabase(config, async (client) => {
        const dropped = await dropPartitionsOlderThan(client, schema, streams, months);
        out.write(dropped.length > 0 ? `dropped ${dropped.join(", ")}\n` : `nothing older than ${months} months\n`);
      });
    }
    default:
      throw new UsageError(action === undefined ? "partitions: missing action" : `partitions: unknown action "${action}"`);
  }
}

/** `ingestd partitions ...` as the command line runs it: its own --help, usage errors with the help. */
export async function partitionsCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(PARTITIONS_HELP);
    return 0;
  }
  try {
    await runPartitions(loadCheckedConfig(), argv, process.stdout);
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`${err.message}\n\n${PARTITIONS_HELP}`);
    throw err;
  }
  return 0;
}

/** `ingestd check-config`: validates the configuration (file + environment) and prints what it resolved to. */
import { parseArgs } from "node:util";
import { configPath } from "../ops/config";
import { loadCheckedConfig } from "../security/checked-config";

/** 0 when valid; an invalid configuration throws ConfigError, which src/cli.ts turns into 78. */
export async function checkConfigCommand(argv: string[]): Promise<number> {
  parseArgs({ args: argv, options: {} });
  const config = loadCheckedConfig();
  process.stdout.write(`configuration OK: ${configPath()}\n`);
  process.stdout.write(
    `  listen ${config.host}:${config.port}, ${config.workers} workers, ring ${config.ringMb} MiB, ` +
      `batch ${config.batchSize} rows / ${config.maxBatchMemoryMb} MiB / ${config.batchTimeoutMs} ms\n`,
  );
  process.stdout.write(`  database: ${config.databaseUrl === null ? `embedded under ${config.dataDir}` : "DATABASE_URL"}\n`);
  if (config.hlogPath !== null) process.stdout.write(`  latency log: ${config.hlogPath}\n`);
  return 0;
}

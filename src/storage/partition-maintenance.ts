import type { IngestdConfig } from "../ops/config";
import type { Logger } from "../ops/logger";
import type { StreamDefinition } from "../shared/stream-definition";
import type { Database } from "./database";
import { dropPartitionsOlderThan, ensureMonthPartitions } from "./partitions";

/**
 * Creates next month's partitions well before the boundary and applies retention, on a timer. A missed
 * run is harmless: the default partition catches rows, and creating a partition moves them out of it.
 */
export function startPartitionMaintenance(
  db: Database,
  config: IngestdConfig,
  streams: readonly StreamDefinition[],
  log: Logger,
): NodeJS.Timeout {
  const run = async () => {
    const client = await db.pool.connect().catch(() => null);
    if (!client) return;
    // A checked-out client has no pool error listener: PostgreSQL going away between two statements
    // would otherwise be an unhandled 'error' event that takes the whole daemon down.
    let lost: Error | undefined;
    const onError = (err: Error) => {
      lost = err;
    };
    client.on("error", onError);
    try {
      const created = await ensureMonthPartitions(client, config.dbSchema, streams);
      if (created.length > 0) log.info({ created }, "partitions created");
      if (config.retentionMonths !== null) {
        const dropped = await dropPartitionsOlderThan(client, config.dbSchema, streams, config.retentionMonths);
        if (dropped.length > 0) log.info({ dropped, retention_months: config.retentionMonths }, "partitions dropped by retention");
      }
    } catch (err) {
      log.error({ err: (err as Error).message }, "partition maintenance failed");
    } finally {
      client.removeListener("error", onError);
      client.release(lost); // a lost connection is discarded, not returned to the pool
    }
  };
  void run();
  const timer = setInterval(run, config.partitionCheckMinutes * 60_000);
  timer.unref();
  return timer;
}

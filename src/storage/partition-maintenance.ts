import type { IngestdConfig } from "../ops/config";
import type { Logger } from "../ops/logger";
import type { StreamDefinition } from "../shared/stream-definition";
import type { Database } from "./database";
import { dropPartitionsOlderThan, ensureMonthPartitions } from "./partitions";
import { maintainDedupState } from "./dedup-partitions";
import { maintainBookkeeping } from "./bookkeeping-partitions";

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
      const own = await maintainBookkeeping(client, config.dbSchema, config);
      if (own.created.length > 0) log.info({ created: own.created }, "bookkeeping partitions created");
      if (own.dropped.length > 0) {
        log.info(
          { dropped: own.dropped, batches_days: config.batchesRetentionDays, dead_letters_days: config.deadLettersRetentionDays },
          "bookkeeping partitions dropped by retention",
        );
      }
      const ids = await maintainDedupState(client, config.dbSchema, streams, config.dedupWindowHours);
      if (ids.created.length > 0) log.info({ created: ids.created }, "id-state partitions created");
      if (ids.filtered.length > 0) log.info({ filtered: ids.filtered }, "id-state filters built for sealed partitions");
      if (ids.dropped.length > 0)
        log.info({ dropped: ids.dropped, window_hours: config.dedupWindowHours }, "id-state partitions dropped past the window");
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

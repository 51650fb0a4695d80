import { dedupStreams, type IngestdConfig } from "../ops/config";
import type { Logger } from "../ops/logger";
import type { StreamDefinition } from "../shared/stream-definition";
import type { Database } from "./database";
import { dropPartitionsOlderThan, ensureMonthPartitions } from "./partitions";
import { buildDedupGroups, maintainDedupGenerations } from "./dedup-partitions";
import { maintainBookkeeping } from "./bookkeeping-partitions";
import type { FilterReaders } from "../shared/filter-readers";
import { FilterDirectory, type FilterDirectorySize } from "./filter-directory";
import { OpenGenerationFilters } from "./open-generation-filters";
import type pg from "pg";

/**
 * How often the id state's open generation is checked for a rotation (docs/storage.md#deduplication): at
 * 50,000 new ids a second its index reaches the 16 MiB of a rotation in about 8 seconds.
 */
const DEDUP_CHECK_MS = 2_000;

/** Runs `work` on a pooled connection; a failure is logged, never thrown (a missed run is retried by the next). */
async function withMaintenanceClient(
  db: Database,
  log: Logger,
  what: string,
  work: (client: pg.PoolClient) => Promise<void>,
): Promise<void> {
  const client = await db.maintenancePool.connect().catch(() => null);
  if (!client) return;
  // A checked-out client has no pool error listener: PostgreSQL going away between two statements
  // would otherwise be an unhandled 'error' event that takes the whole daemon down.
  let lost: Error | undefined;
  const onError = (err: Error) => {
    lost = err;
  };
  client.on("error", onError);
  try {
    await work(client);
  } catch (err) {
    log.error({ err: (err as Error).message }, `${what} failed`);
  } finally {
    client.removeListener("error", onError);
    client.release(lost); // a lost connection is discarded, not returned to the pool
  }
}

/**
 * Creates next month's partitions well before the boundary and applies retention, on a timer
 * (`partitionCheckMinutes`); rotates, filters and expires the id state's generations on a faster one, and
 * publishes their filters to the workers. A missed run is harmless: the default partition catches rows,
 * creating a partition moves them out of it, and an open generation that grew past its size only costs time
 * until the next check.
 */
export function startPartitionMaintenance(
  db: Database,
  config: IngestdConfig,
  streams: readonly StreamDefinition[],
  log: Logger,
  readers: FilterReaders | null = null,
): { stop(): void; filters(): FilterDirectorySize; filtersLoaded: Promise<void> } {
  const partitions = () =>
    withMaintenanceClient(db, log, "partition maintenance", async (client) => {
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
    });
  const idStreams = streams.filter((s) => s.dedupKey !== undefined);
  // Filters only for the streams that deduplicate here; the others' id state is still rotated and expired.
  const deduplicating = new Set(dedupStreams(config, streams));
  const filters = new FilterDirectory(
    config.dbSchema,
    idStreams.filter((s) => deduplicating.has(s.name)),
    config.dedupFilterMb * 2 ** 20,
    readers,
  );
  const prefills = new OpenGenerationFilters();
  let unfiltered = 0;
  const publish = async (client: pg.ClientBase) => {
    await filters.refresh(client);
    filters.publish();
    const now = filters.size().unfiltered;
    if (now > 0 && unfiltered === 0) {
      log.warn(
        { unfiltered_generations: now, dedup_filter_mb: config.dedupFilterMb },
        "id-state filters exceed dedupFilterMb: the oldest generations are probed in PostgreSQL for every id (docs/storage.md#filter-memory)",
      );
    }
    unfiltered = now;
  };
  let idStateBusy = false;
  let published = false;
  let firstPass!: () => void;
  // Settled by the first publication, or by a first pass that could not make one (the daemon starts anyway).
  const filtersLoaded = new Promise<void>((resolve) => {
    firstPass = resolve;
  });
  const idState = async () => {
    if (idStateBusy || idStreams.length === 0) return; // a group filter may take longer than a period
    idStateBusy = true;
    await withMaintenanceClient(db, log, "id-state maintenance", async (client) => {
      // Until their first publication the workers probe every sealed generation with every id: give them the
      // filters that exist before building any (a restart may find minutes of filters and groups to build).
      if (!published) {
        await publish(client);
        published = true;
        firstPass();
      }
      const ids = await maintainDedupGenerations(
        client,
        config.dbSchema,
        idStreams,
        config.dedupWindowHours,
        undefined,
        undefined,
        filters,
        prefills,
      );
      if (ids.sealed.length > 0) log.debug({ sealed: ids.sealed }, "id-state generations sealed");
      if (ids.filtered.length > 0) log.info({ filtered: ids.filtered }, "id-state filters built for sealed generations");
      if (ids.unfilled.length > 0)
        log.warn({ unfilled: ids.unfilled }, "id-state filters of the open generation not filled: its seal reads it whole");
      if (ids.dropped.length > 0)
        log.info({ dropped: ids.dropped, window_hours: config.dedupWindowHours }, "id-state generations dropped past the window");
      // A generation sealed without a published filter is probed with every id: publish before the groups.
      await publish(client);
      const grouped = await buildDedupGroups(client, config.dbSchema, idStreams, filters);
      if (grouped.length > 0) {
        log.info({ filtered: grouped }, "id-state filters built for groups of sealed generations");
        await publish(client);
      }
    });
    idStateBusy = false;
  };
  void partitions().then(idState).finally(firstPass);
  const partitionTimer = setInterval(partitions, config.partitionCheckMinutes * 60_000);
  const idStateTimer = setInterval(idState, DEDUP_CHECK_MS);
  partitionTimer.unref();
  idStateTimer.unref();
  return {
    filtersLoaded,
    filters: () => filters.size(),
    stop() {
      clearInterval(partitionTimer);
      clearInterval(idStateTimer);
      filters.close();
    },
  };
}

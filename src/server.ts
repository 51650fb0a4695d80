/**
 * Assembles the daemon: database (embedded or DATABASE_URL), schema, ring, worker pool, uWS app and routes;
 * and takes it down again in the order that keeps every acknowledged event committed.
 */
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { streams } from "../config/streams";
import type { IngestdConfig } from "./config";
import type { ServerContext } from "./context";
import { Database } from "./database";
import { Dispatcher } from "./dispatcher";
import { startEmbeddedDb, type EmbeddedDb } from "./embedded-db";
import { answer, answerError, markClosed } from "./http-responses";
import { ApiKeysError } from "./api-keys";
import { Auth } from "./auth";
import { openApiDocument } from "./openapi";
import { registerIngestRoute } from "./ingest-routes";
import { registerTpchRoutes } from "./tpch-routes";
import { registerBatchRoutes } from "./batch-routes";
import { BatchRegistry } from "./batch-registry";
import { LatencyRecorder } from "./latency";
import { redactUrl, type Logger } from "./logger";
import { Metrics } from "./metrics";
import { registerOpsRoutes } from "./ops-routes";
import { Ring } from "./ring";
import { ensureSchema } from "./schema";
import { dropPartitionsOlderThan, ensureMonthPartitions } from "./partitions";
import { ConfigError } from "./config";
import { uws, type us_listen_socket } from "./uws";
import { registerWebSocket } from "./ws-protocol";
import { COMMIT_GAUGE_COMMITTING, COMMIT_GAUGE_SLOTS, COMMIT_GAUGE_WAITING } from "../workers/task-protocol";

/** LIBUS_LISTEN_EXCLUSIVE_PORT */
const EXCLUSIVE_PORT = 1;

export const VERSION: string = require("../../package.json").version;

export interface RunningServer {
  port: number;
  databaseUrl: string;
  /** Stops accepting, drains in-flight work (answering and acking it), closes everything. */
  stop(): Promise<void>;
  /**
   * SIGHUP: reloads the API keys (a bad keys file keeps the old keys, and logs why) and reopens the latency
   * interval log (logrotate).
   */
  reload(): void;
}

async function connectWithRetry(url: string, log: Logger, deadlineMs: number): Promise<pg.Client> {
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      return client;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() - started > deadlineMs) throw new Error(`cannot connect to PostgreSQL at ${redactUrl(url)}: ${(err as Error).message}`);
      log.warn({ attempt, err: (err as Error).message }, "PostgreSQL not reachable yet, retrying");
      await new Promise((r) => setTimeout(r, Math.min(2000, 200 * attempt)));
    }
  }
}

/** Streams that deduplicate: each stream's default, overridden by the `deduplicate` setting. */
export function dedupStreams(config: IngestdConfig): string[] {
  return streams
    .filter((s) => s.dedupKey !== undefined && (config.deduplicate[s.name] ?? s.dedupByDefault ?? false))
    .map((s) => s.name);
}

/**
 * Creates next month's partitions well before the boundary and applies retention, on a timer. A missed
 * run is harmless: the default partition catches rows, and creating a partition moves them out of it.
 */
function startPartitionMaintenance(db: Database, config: IngestdConfig, log: Logger): NodeJS.Timeout {
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

export async function startServer(config: IngestdConfig, log: Logger): Promise<RunningServer> {
  for (const name of Object.keys(config.deduplicate)) {
    const stream = streams.find((s) => s.name === name);
    if (!stream?.dedupKey) throw new ConfigError(`deduplicate.${name}: not a stream with an id to deduplicate by`);
  }
  // API keys before anything starts: a bad keys file is a configuration error (exit 78), not a late failure.
  let auth: Auth;
  try {
    auth = new Auth(config.apiKeysFile, process.env.INGESTD_API_KEYS);
  } catch (err) {
    if (err instanceof ApiKeysError) throw new ConfigError(err.message);
    throw err;
  }
  auth.announce(log);
  let embedded: EmbeddedDb | null = null;
  let databaseUrl = config.databaseUrl;
  if (databaseUrl === null) {
    const dir = path.resolve(config.dataDir);
    log.info({ dir }, "no DATABASE_URL: starting embedded PostgreSQL");
    embedded = await startEmbeddedDb({ dir, log: (line) => log.debug({ postgres: line }) });
    databaseUrl = embedded.url;
    log.info({ port: embedded.port }, "embedded PostgreSQL ready");
  }

  const schemaClient = await connectWithRetry(databaseUrl, log, 30_000);
  try {
    await ensureSchema(schemaClient, config.dbSchema, streams);
  } finally {
    await schemaClient.end().catch(() => undefined);
  }

  const db = new Database({ connectionString: databaseUrl, probeIntervalMs: 1000 });
  const maintenance = startPartitionMaintenance(db, config, log);
  await db.probe();
  db.startProbing();
  db.onChange((up) => (up ? log.info("database reachable again") : log.error({ err: db.error }, "database unreachable")));

  // Shards of at least one maximum body each, so any accepted body fits in a shard. An eighth of the ring is
  // reserved for work of priority above 0 (README "Priority"), unless that would leave no room for a
  // maximum body.
  const maxBody = config.maxBodyMb * 1024 * 1024;
  const ringBytes = config.ringMb * 1024 * 1024;
  const reserveBytes = ringBytes - Math.floor(ringBytes / 8) >= maxBody ? Math.floor(ringBytes / 8) : 0;
  const ring = new Ring({
    bytes: ringBytes,
    shards: Math.max(1, Math.min(8, Math.floor((ringBytes - reserveBytes) / maxBody))),
    reserveBytes,
  });
  const commitGauges = new Int32Array(new SharedArrayBuffer(COMMIT_GAUGE_SLOTS * 4));

  const dispatcher = new Dispatcher({
    workers: config.workers,
    maxWorkerBytes: config.workers * config.workerBacklogMb * 1024 * 1024,
    workerData: {
      ring: ring.buffer,
      connectionString: databaseUrl,
      dbSchema: config.dbSchema,
      batchSize: config.batchSize,
      batchTimeoutMs: config.batchTimeoutMs,
      maxBatchBytes: config.maxBatchMemoryMb * 1024 * 1024,
      stallTimeoutMs: config.overloadDeadlineMs,
      maxErrorsReported: config.maxErrorsReported,
      dedupStreams: dedupStreams(config),
      commitGauges: commitGauges.buffer as SharedArrayBuffer,
    },
  });

  const latency = new LatencyRecorder(config.latencyIntervalMs);
  latency.start(config.hlogPath);
  let wsConnections = () => 0;
  const metrics = new Metrics({
    ringBytesInUse: () => ring.used,
    ringCapacityBytes: ring.capacity,
    ringReserveBytesInUse: () => ring.reserveUsed,
    ringReserveBytes: ring.reserveCapacity,
    ringWaiting: () => ring.waiting,
    commitTasks: (state) => Atomics.load(commitGauges, state === "waiting" ? COMMIT_GAUGE_WAITING : COMMIT_GAUGE_COMMITTING),
    wsConnections: () => wsConnections(),
    databaseUp: () => db.up,
    workerThreads: () => dispatcher.pool.threads,
    tasksInFlight: () => dispatcher.tasksInFlight,
    tasksWaiting: () => dispatcher.tasksQueued,
    workerBacklogBytes: () => dispatcher.bytesInWorkers,
  });
  dispatcher.latency = latency;
  dispatcher.log = log;
  dispatcher.metrics = metrics;

  const ctx: ServerContext = {
    config,
    log,
    ring,
    dispatcher,
    db,
    metrics,
    latency,
    batches: new BatchRegistry(db, config.dbSchema),
    streams: new Map(streams.map((s) => [s.name, s])),
    version: VERSION,
    startedAt: Date.now(),
    auth,
    draining: false,
  };

  const app = config.tlsCert && config.tlsKey
    ? uws.SSLApp({ cert_file_name: config.tlsCert, key_file_name: config.tlsKey })
    : uws.App();
  registerIngestRoute(app, ctx, { route: "/v1/streams/:stream/events", pattern: "/v1/streams/:stream/events", stream: null, envelope: false });
  registerIngestRoute(app, ctx, { route: "/v1/ingest/batch", pattern: "/v1/ingest/batch", stream: "events", envelope: true });
  registerIngestRoute(app, ctx, { route: "/events", pattern: "/events", stream: "product_events", envelope: false });
  registerTpchRoutes(app, ctx);
  registerBatchRoutes(app, ctx);
  const openApi = JSON.stringify(openApiDocument(streams, VERSION));
  app.get("/openapi.json", (res) => {
    metrics.httpRequests.inc({ route: "/openapi.json", status: "200" });
    answer(res, 200, openApi);
  });
  const ws = registerWebSocket(app, ctx);
  wsConnections = ws.connections;
  registerOpsRoutes(app, ctx, ws.connections);
  app.any("/*", (res, req) => {
    res.onAborted(() => markClosed(res));
    metrics.httpRequests.inc({ route: "unmatched", status: "404" });
    answerError(res, 404, "not_found", `no route for ${req.getMethod().toUpperCase()} ${req.getUrl()}`, { close: true });
  });

  const listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
    // Exclusive: without it uWS sets SO_REUSEPORT and a second daemon on the same port would silently
    // split the traffic with the first instead of failing to start.
    (app.listen as unknown as (host: string, port: number, options: number, cb: (s: us_listen_socket | false) => void) => void)(config.host, config.port, EXCLUSIVE_PORT, (socket) => {
      if (socket) resolve(socket);
      else reject(new Error(`cannot listen on ${config.host}:${config.port} (address in use or not permitted)`));
    });
  });
  const port = uws.us_socket_local_port(listenSocket as any);
  log.info(
    {
      host: config.host,
      port,
      tls: config.tlsCert !== null,
      workers: config.workers,
      ring_mb: config.ringMb,
      database: redactUrl(databaseUrl),
      embedded: embedded !== null,
      cpus: os.availableParallelism(),
    },
    `ingestd listening on ${config.tlsCert ? "https" : "http"}://${config.host}:${port}`,
  );

  let stopping: Promise<void> | null = null;
  return {
    port,
    databaseUrl,
    reload() {
      auth.reload(log);
      latency.reopenLog();
    },
    stop() {
      stopping ??= (async () => {
        const started = Date.now();
        ctx.draining = true;
        uws.us_listen_socket_close(listenSocket);
        log.info("draining: no new connections; committing and acknowledging in-flight work");
        await Promise.race([
          Promise.all([dispatcher.idle(), ws.shutdown()]),
          new Promise((r) => setTimeout(r, config.stopTimeoutMs)),
        ]);
        await dispatcher.idle();
        await dispatcher.close();
        ctx.batches.close();
        latency.stop();
        clearInterval(maintenance);
        await db.close();
        if (embedded) await embedded.stop();
        log.info({ ms: Date.now() - started }, "stopped");
      })();
      return stopping;
    },
  };
}

/**
 * Assembles the daemon: database (embedded or DATABASE_URL), schema, ring, worker pool, uWS app and routes;
 * and takes it down again in the order that keeps every acknowledged event committed.
 */
import { randomUUID } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { lineEntities, streams } from "../../config/streams";
import { ConfigError, dedupStreams, ignoreUnknownStreams, sourceStreams, type IngestdConfig } from "../ops/config";
import { LatencyRecorder } from "../ops/latency";
import { redactUrl, type Logger } from "../ops/logger";
import { Metrics } from "../ops/metrics";
import { openApiDocument } from "../ops/openapi";
import { Stats } from "../ops/stats";
import { VERSION } from "../ops/version";
import { FilterReaders } from "../shared/filter-readers";
import {
  COMMIT_GAUGE_COMMITTING,
  COMMIT_GAUGE_LONG,
  COMMIT_GAUGE_ONE_TRIP,
  COMMIT_GAUGE_SLOTS,
  COMMIT_GAUGE_WAITING,
} from "../shared/task-protocol";
import { ApiKeysError } from "../security/api-keys";
import { Auth } from "../security/auth";
import { CorsPolicy } from "../security/cors";
import { BatchRegistry } from "../storage/batch-registry";
import { holdPresence } from "../storage/daemon-presence";
import { connectWithRetry, Database } from "../storage/database";
import { startEmbeddedDb, type EmbeddedDb } from "../storage/embedded-db";
import { startPartitionMaintenance } from "../storage/partition-maintenance";
import { READ_ALIASES } from "../shared/read-columns";
import { ReadPool } from "../storage/read-pool";
import { ensureSchema } from "../storage/schema";
import { Dispatcher } from "./dispatcher";
import { HttpPolicy } from "./http-policy";
import { answer, answerError, markClosed } from "./http-responses";
import { Ring } from "./ring";
import { registerBatchRoutes } from "./routes/batch-routes";
import { registerDocsRoutes } from "./routes/docs-routes";
import { registerOpsRoutes } from "./routes/ops-routes";
import { type ReadAccess, registerReadRoutes } from "./routes/read-routes";
import { registerReplayRoutes } from "./routes/replay-routes";
import { registerSourceRoutes } from "./routes/source-routes";
import { OPEN_ACCESS } from "../security/api-keys";
import { SourceScheduler } from "../sources/scheduler";
import { submitInternalBody } from "./submission/internal-bodies";
import { AckTelemetry } from "./submission/ack-telemetry";
import { Admission } from "./submission/admission";
import type { Pipeline } from "./submission/pipeline";
import { Submitter } from "./submission/submitter";
import { registerIngestRoute } from "./transports/http-ingest";
import { registerLineRoutes } from "./transports/line-routes";
import { registerWebSocket } from "./transports/ws-stream";
import { ProducerSessions } from "./sessions/producer-sessions";
import { uws, type us_listen_socket } from "./uws";

/** LIBUS_LISTEN_EXCLUSIVE_PORT */
const EXCLUSIVE_PORT = 1;

/** The longest the port waits for the id-state filters at start (measured: ~1 s for 60 MiB of them). */
const FIRST_FILTERS_WAIT_MS = 30_000;

/** Waits for the first publication of the id-state filters, FIRST_FILTERS_WAIT_MS at most. */
async function firstFilters(loaded: Promise<void>, log: Logger): Promise<void> {
  const started = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const late = await Promise.race([
    loaded.then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), FIRST_FILTERS_WAIT_MS);
    }),
  ]);
  clearTimeout(timer);
  if (late) log.warn({ waited_ms: FIRST_FILTERS_WAIT_MS }, "id-state filters not loaded yet: opening the port without them");
  else log.debug({ ms: Date.now() - started }, "id-state filters loaded");
}

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

export async function startServer(config: IngestdConfig, log: Logger): Promise<RunningServer> {
  for (const name of Object.keys(config.deduplicate)) {
    const stream = streams.find((s) => s.name === name);
    if (!stream?.dedupKey) throw new ConfigError(`deduplicate.${name}: not a stream with an id to deduplicate by`);
  }
  const ignoringUnknown = ignoreUnknownStreams(config, streams);
  const sources = config.sources ?? {};
  sourceStreams(config, streams);

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
    embedded = await startEmbeddedDb({
      dir,
      log: (line) => log.debug({ postgres: line }),
      notice: (message, fields) => log.info(fields, message),
    });
    // Its own connections through the cluster's Unix-domain socket; commands elsewhere use embedded.url (TCP).
    databaseUrl = embedded.localUrl;
    log.info({ port: embedded.port, data_dir: embedded.dataDir, binaries: embedded.binDir }, "embedded PostgreSQL ready");
  }

  const schemaClient = await connectWithRetry(databaseUrl, log, 30_000);
  try {
    await ensureSchema(schemaClient, config.dbSchema, streams, new Date(), config);
  } finally {
    await schemaClient.end().catch(() => undefined);
  }

  const db = new Database({ connectionString: databaseUrl, probeIntervalMs: 1000 });
  // Which filter publication each worker has taken: the maintenance reuses the memory of those no longer read.
  const filterReaders = new FilterReaders();
  const maintenance = startPartitionMaintenance(db, config, streams, log, filterReaders);
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

  const latency = new LatencyRecorder(config.latencyIntervalMs);
  latency.start(config.hlogPath);
  // The gauges read the parts below when scraped, by which time they all exist.
  const metrics: Metrics = new Metrics({
    ringBytesInUse: () => ring.used,
    ringCapacityBytes: ring.capacity,
    ringReserveBytesInUse: () => ring.reserveUsed,
    ringReserveBytes: ring.reserveCapacity,
    ringWaiting: () => ring.waiting,
    commitTasks: (state) => Atomics.load(commitGauges, state === "waiting" ? COMMIT_GAUGE_WAITING : COMMIT_GAUGE_COMMITTING),
    groupCommits: (path) => Atomics.load(commitGauges, path === "one_trip" ? COMMIT_GAUGE_ONE_TRIP : COMMIT_GAUGE_LONG) >>> 0,
    wsConnections: () => ws.connections(),
    databaseUp: () => db.up,
    workerThreads: () => dispatcher.pool.threads,
    tasksInFlight: () => dispatcher.tasksInFlight,
    tasksWaiting: () => dispatcher.tasksQueued,
    workerBacklogBytes: () => dispatcher.bytesInWorkers,
    dedupFilters: () => maintenance.filters(),
  });
  const dispatcher: Dispatcher = new Dispatcher({
    workers: config.workers,
    latency,
    metrics,
    log,
    maxWorkerBytes: config.workers * config.workerBacklogMb * 1024 * 1024,
    youngGenerationMb: config.workerYoungGenerationMb,
    workerData: {
      ring: ring.buffer,
      connectionString: databaseUrl,
      dbSchema: config.dbSchema,
      batchSize: config.batchSize,
      batchTimeoutMs: config.batchTimeoutMs,
      maxBatchBytes: config.maxBatchMemoryMb * 1024 * 1024,
      stallTimeoutMs: config.overloadDeadlineMs,
      maxErrorsReported: config.maxErrorsReported,
      maxBodyBytes: maxBody,
      dedupStreams: dedupStreams(config, streams),
      commitGauges: commitGauges.buffer as SharedArrayBuffer,
      filterReaders: filterReaders.buffer,
      ignoreUnknownStreams: ignoringUnknown,
    },
  });

  const streamMap = new Map(streams.map((s) => [s.name, s]));
  // Other daemons read this daemon's presence to tell its pending batch rows from abandoned ones.
  const instance = randomUUID();
  const presence = holdPresence(databaseUrl, instance);
  const batches = new BatchRegistry(db, config.dbSchema, instance, (err, rows) =>
    log.warn({ err: err.message, rows }, "cannot write batch status rows; this daemon still answers for them"),
  );
  const stats = new Stats();
  const admission = new Admission({ auth, streams: streamMap, db, retryAfterSeconds: config.retryAfterSeconds });
  const pipeline: Pipeline = {
    auth,
    admission,
    ring,
    submitter: new Submitter({ ring, dispatcher, auth, batches }),
    batches,
    telemetry: new AckTelemetry(latency, metrics, stats),
    metrics,
    limits: { maxBodyBytes: maxBody, overloadDeadlineMs: config.overloadDeadlineMs, retryAfterSeconds: config.retryAfterSeconds },
  };

  // Every route registers through the policy: request ids, CORS headers and preflights (docs/http-api.md#cors).
  const http = new HttpPolicy(new CorsPolicy(config.cors), log);
  const app = http.routes(
    config.tlsCert && config.tlsKey ? uws.SSLApp({ cert_file_name: config.tlsCert, key_file_name: config.tlsKey }) : uws.App(),
  );
  registerIngestRoute(app, pipeline, {
    route: "/v1/streams/:stream/events",
    pattern: "/v1/streams/:stream/events",
    stream: null,
    envelope: false,
  });
  registerIngestRoute(app, pipeline, { route: "/v1/ingest/batch", pattern: "/v1/ingest/batch", stream: "events", envelope: true });
  registerIngestRoute(app, pipeline, { route: "/events", pattern: "/events", stream: "product_events", envelope: false });
  registerLineRoutes(app, pipeline);
  const sessions = new ProducerSessions({
    pool: db.pool,
    connectionString: databaseUrl,
    schema: config.dbSchema,
    log,
    retentionDays: config.producerRetentionDays,
  });
  const ws = registerWebSocket(app, pipeline, config.ws, http, sessions);
  registerBatchRoutes(app, { batches, metrics, retryAfterSeconds: config.retryAfterSeconds });
  // Reads get connections of their own (docs/http-api.md#reading-back): never the probe's, never a worker's.
  const reads = new ReadPool(databaseUrl, config.reads);
  const readAccess: ReadAccess = {
    auth,
    pool: reads,
    schema: config.dbSchema,
    streams: streamMap,
    metrics,
    retryAfterSeconds: config.retryAfterSeconds,
  };
  registerReadRoutes(app, { ...readAccess, aliases: READ_ALIASES });
  registerReplayRoutes(app, { ...readAccess, pipeline });
  // Pull sources feed the same submission path as producers (docs/sources.md); configured by the operator,
  // so they carry no API key and no rate limit.
  const scheduler =
    Object.keys(sources).length === 0
      ? null
      : new SourceScheduler(
          sources,
          databaseUrl,
          config.dbSchema,
          (stream, ndjson, source) =>
            submitInternalBody(pipeline, OPEN_ACCESS, { stream, format: "ndjson", text: ndjson, source, transport: "pull" }),
          metrics,
          log,
        );
  registerSourceRoutes(app, { scheduler, sources, auth, metrics, retryAfterSeconds: config.retryAfterSeconds });
  const openApi = JSON.stringify(openApiDocument(streams, VERSION, new Set(ignoringUnknown)));
  app.get("/openapi.json", (res) => {
    metrics.httpRequests.inc({ route: "/openapi.json", status: "200" });
    answer(res, 200, openApi);
  });
  registerDocsRoutes(app, metrics);
  registerOpsRoutes(app, {
    db,
    admission,
    ring,
    metrics,
    latency,
    stats,
    streamNames: [...streamMap.keys()],
    entities: lineEntities,
    startedAt: Date.now(),
    wsConnections: () => ws.connections(),
    retryAfterSeconds: config.retryAfterSeconds,
  });
  app.any("/*", (res, req) => {
    res.onAborted(() => markClosed(res));
    metrics.httpRequests.inc({ route: "unmatched", status: "404" });
    answerError(res, 404, "not_found", `no route for ${req.getMethod().toUpperCase()} ${req.getUrl()}`, { close: true });
  });

  // Rows for new sources and their first runs (those due) start before the port opens: nothing waits on it.
  await scheduler?.start();
  // Until the workers hold the id-state filters, each batch of a deduplicating stream probes every sealed
  // generation with every id (about 1.5 s a batch at 20 million ids): the port opens once they are loaded, or
  // after FIRST_FILTERS_WAIT_MS (docs/storage.md#filter-memory).
  await firstFilters(maintenance.filtersLoaded, log);
  const listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
    // Exclusive: without it uWS sets SO_REUSEPORT and a second daemon on the same port would silently
    // split the traffic with the first instead of failing to start.
    (app.listen as unknown as (host: string, port: number, options: number, cb: (s: us_listen_socket | false) => void) => void)(
      config.host,
      config.port,
      EXCLUSIVE_PORT,
      (socket) => {
        if (socket) resolve(socket);
        else reject(new Error(`cannot listen on ${config.host}:${config.port} (address in use or not permitted)`));
      },
    );
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
        if (config.drainDelayMs > 0) {
          admission.startLeaving();
          log.info({ ms: config.drainDelayMs }, "leaving: /health answers 503 draining; still serving until the delay ends");
          await new Promise((r) => setTimeout(r, config.drainDelayMs));
        }
        admission.startDraining();
        uws.us_listen_socket_close(listenSocket);
        log.info("draining: no new connections; committing and acknowledging in-flight work");
        // Pull sources' requests are aborted (those runs keep their watermark); pages already handed over
        // commit with the rest of the in-flight work.
        await scheduler?.stop();
        await Promise.race([Promise.all([dispatcher.idle(), ws.shutdown()]), new Promise((r) => setTimeout(r, config.stopTimeoutMs))]);
        await dispatcher.idle();
        await dispatcher.close();
        await batches.close();
        await presence.close();
        latency.stop();
        maintenance.stop();
        await sessions.close();
        await reads.close();
        await db.close();
        if (embedded) await embedded.stop();
        log.info({ ms: Date.now() - started }, "stopped");
      })();
      return stopping;
    },
  };
}

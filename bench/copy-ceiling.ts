/**
 * The COPY ceiling: the bench's rows (same event shape and id kind as the daemon phases) streamed straight
 * into the `events` table with pg-copy-streams, no daemon, over 1 and 2 parallel connections. The table is
 * the run's own, not emptied: it grows through the run as it does under the daemon. The rows are made
 * exactly as a worker makes them (frame JSON parsed, typia-validated, encoded by
 * workers/records/row-encoder.ts), so the bytes are the ones the daemon sends;
 * that preparation is timed too, as the single-thread CPU cost of a worker's share of the pipeline.
 * A third run sends the same rows through the daemon's own commit SQL, to split the gap between the daemon
 * and the ceiling into what its SQL costs PostgreSQL and what the daemon itself adds.
 */
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { dedupKey } from "../src/shared/dedup-key";
import { copyStatement } from "../src/shared/sql-identifiers";
import { commitTarget } from "../workers/commit/commit-targets";
import { copyIn } from "../workers/commit/copy-in";
import { claimIds, oneTripClaim, probeFilterHits } from "../workers/commit/id-claim";
import { type FilterCheck, IdFilters } from "../workers/commit/id-filters";
import { DEDUP_NOT_ENTERED, dedupShape } from "../src/shared/dedup-sql";
import { FilterDirectory } from "../src/storage/filter-directory";
import { compileRowEncoder } from "../workers/records/row-encoder";
import type { BenchDb } from "./bench-db";
import { dbDelta, markDb, type DbDelta, type DbMark } from "./db-counters";
import { FrameTemplate, type IdKind } from "./event-factory";
import { benchStream } from "./event-table";
import { CpuMeter, type CpuShare } from "./proc-stats";
import { countRows } from "./row-count";

export interface CeilingRun {
  streams: number;
  rows: number;
  seconds: number;
  rows_per_s: number;
  mib_per_s: number;
  rows_verified: number;
  cpu: CpuShare;
  /** PostgreSQL CPU per row, µs (null without an embedded server to measure). */
  pg_us_per_row: number | null;
  /** The bench process's own CPU per row while sending (pg-copy-streams, socket writes), µs. */
  client_us_per_row: number;
  /** Rows/s this CPU cost allows on all cores of an otherwise idle machine. */
  capacity_rows_per_s: number | null;
  db: DbDelta | null;
}

export interface CeilingResult {
  row_bytes_avg: number;
  /** parse + validate + encode on one thread, events/s: a worker's CPU-bound rate, minus the database. */
  prepare_events_per_s: number;
  runs: CeilingRun[];
  /** The same rows through the daemon's commit statements (id claim + COPY when deduplicating), no daemon. */
  commit_sql: (CeilingRun & { batch_size: number; dedup: boolean }) | null;
  /**
   * The 2-stream ceiling measured again after the daemon phases (fresh rows and ids, the table and id state
   * as the phases left them): a run of a few seconds on a shared machine can land in a quiet or a busy
   * moment, so the daemon phases' ratios are taken against the mean of both (`basis`).
   */
  after: CeilingRun | null;
  /** What the ratios "× ceiling" divide by: the 2-stream run, or the mean of it and `after`. */
  basis: { rows_per_s: number; capacity_rows_per_s: number | null } | null;
}

const ROWS_PER_CHUNK = 2000;
const EVENTS_PER_FRAME = 100;

/** Rows as COPY text (each ending in a newline), made the way a worker makes them, with their ids and times. */
function prepareRows(total: number, kind: IdKind): { rows: string[]; keys: string[]; times: string[]; seconds: number } {
  const stream = benchStream();
  const encode = compileRowEncoder(stream);
  const template = new FrameTemplate(kind, EVENTS_PER_FRAME);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const rows: string[] = new Array(total);
  const keys: string[] = new Array(total);
  const times: string[] = new Array(total);
  const keyColumn = stream.columns.find((c) => c.name === stream.dedupKey)!;
  const timeColumn = stream.columns.find((c) => c.name === stream.timeColumn)!;
  const started = performance.now();
  const ctx = { receivedAt: new Date().toISOString() };
  for (let first = 0; first < total; first += EVENTS_PER_FRAME) {
    const frame = template.stamp();
    const records = JSON.parse(decoder.decode(frame)) as unknown[];
    const n = Math.min(EVENTS_PER_FRAME, total - first);
    for (let i = 0; i < n; i++) {
      const checked = stream.validate(records[i]);
      if (!checked.success) throw new Error(`bench event fails the stream's validator: ${JSON.stringify(checked.errors[0])}`);
      rows[first + i] = encode(checked.data, ctx);
      keys[first + i] = String(keyColumn.value(checked.data, ctx));
      times[first + i] = String(timeColumn.value(checked.data, ctx));
    }
  }
  return { rows, keys, times, seconds: (performance.now() - started) / 1000 };
}

/** Consecutive rows joined into buffers of `size` rows. */
function chunk(rows: readonly string[], size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let from = 0; from < rows.length; from += size) {
    chunks.push(Buffer.from(rows.slice(from, Math.min(rows.length, from + size)).join(""), "utf8"));
  }
  return chunks;
}

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: "ingestd-bench-copy" });
  await client.connect();
  return client;
}

/** One COPY statement (autocommit) of all `chunks`, honouring the stream's backpressure. */
async function copyChunks(client: pg.Client, sql: string, chunks: readonly Buffer[]): Promise<void> {
  const stream = client.query(copyFrom(sql));
  const done = new Promise<void>((resolve, reject) => {
    stream.on("error", reject);
    stream.on("finish", resolve);
  });
  for (const chunk of chunks) {
    if (!stream.write(chunk)) await Promise.race([once(stream, "drain"), done]);
  }
  stream.end();
  await done;
}

export async function measureCopyCeiling(
  db: BenchDb,
  schema: string,
  totalRows: number,
  streamCounts: readonly number[],
  cores: number,
  kind: IdKind,
  log: (line: string) => void,
  commitSqlOptions: { rows: number; batchSize: number; dedup: boolean; streams: number } | null = null,
): Promise<CeilingResult> {
  const stream = benchStream();
  const sql = copyStatement(
    schema,
    stream.table,
    stream.columns.map((c) => c.name),
  );
  const prepared = prepareRows(totalRows, kind);
  const chunks = chunk(prepared.rows, ROWS_PER_CHUNK);
  const bytes = chunks.reduce((a, c) => a + c.length, 0);
  log(`COPY ceiling: ${totalRows} rows prepared (${(bytes / 2 ** 20).toFixed(1)} MiB) in ${prepared.seconds.toFixed(2)} s`);

  const runs: CeilingRun[] = [];
  for (const n of streamCounts) {
    const run = await timedRun(db, schema, n, chunks, bytes, totalRows, cores, (client, share) => copyChunks(client, sql, share));
    runs.push(run);
    log(`COPY ceiling, ${n} stream${n > 1 ? "s" : ""}: ${run.rows_per_s.toLocaleString("en-US")} rows/s (${run.seconds} s)`);
  }

  let commitSql: CeilingResult["commit_sql"] = null;
  if (commitSqlOptions) {
    // The daemon's own statements (workers/commit/commit-targets.ts), batch after batch on each connection as a
    // worker runs them, minus the daemon: what PostgreSQL can do with the daemon's SQL alone.
    const { batchSize, dedup, streams: n } = commitSqlOptions;
    const rows = Math.min(totalRows, commitSqlOptions.rows);
    const target = commitTarget(schema, stream, 0, dedup);
    const batches = chunk(prepared.rows.slice(0, rows), batchSize);
    // Each batch's id-state keys and the filters' verdict, as a worker sends them to claim the ids before its
    // COPY: the filters as the daemon's maintenance publishes them (checked here before the clock starts).
    const filters = new IdFilters(dedupShape(schema, stream)?.slots ?? "");
    if (target.dedup !== null) {
      const directory = new FilterDirectory(schema, [stream]);
      const client = await connect(db.url);
      try {
        await directory.refresh(client);
        filters.set(directory.list());
      } finally {
        await client.end();
        directory.close();
      }
    }
    const claims = new Map<Buffer, { keys: string[]; checked: FilterCheck }>();
    batches.forEach((b, k) => {
      const from = k * batchSize;
      const to = Math.min(rows, from + batchSize);
      const keys = prepared.keys.slice(from, to).map(dedupKey);
      claims.set(b, { keys, checked: filters.check(keys) });
    });
    const batchBytes = batches.reduce((a, c) => a + c.length, 0);
    const run = await timedRun(db, schema, n, batches, batchBytes, rows, cores, async (client, share) => {
      for (const batch of share) {
        // As a worker does (workers/commit/group-commit.ts): the filters' hits probed before BEGIN, BEGIN sent
        // with the claim's probe, the COPY with the COMMIT.
        // Once a claim learnt the open generation, the claim, the COPY and COMMIT in one Query (oneTripClaim);
        // the long way when it cannot be entered.
        const claim = target.dedup !== null ? claims.get(batch)! : null;
        const pre = claim !== null ? await probeFilterHits(client, target.dedup!, claim.checked) : null;
        const trip = claim !== null ? oneTripClaim(target.dedup!, claim.keys, pre!) : null;
        if (trip !== null) {
          try {
            await copyIn(client, ["BEGIN", ...trip.statements, target.copySql, "COMMIT"].join("; "), [trip.payload, batch]);
            continue;
          } catch (err) {
            if ((err as pg.DatabaseError).code !== DEDUP_NOT_ENTERED) throw err;
            await client.query("ROLLBACK");
          }
        }
        if (claim !== null) await claimIds(client, target.dedup!, claim.keys, pre!, "BEGIN");
        await copyIn(client, `${claim !== null ? "" : "BEGIN; "}${target.copySql}; COMMIT`, [batch]);
      }
    });
    commitSql = { ...run, batch_size: batchSize, dedup: target.dedup !== null };
    log(
      `daemon's commit SQL, ${n} streams, ${batchSize}-row batches${commitSql.dedup ? ", dedup id claim" : ""}: ${run.rows_per_s.toLocaleString("en-US")} rows/s`,
    );
  }
  const copy2 = runs.find((r) => r.streams === 2) ?? null;
  return {
    row_bytes_avg: Math.round(bytes / totalRows),
    prepare_events_per_s: Math.round(totalRows / prepared.seconds),
    runs,
    commit_sql: commitSql,
    after: null,
    basis: copy2 ? { rows_per_s: copy2.rows_per_s, capacity_rows_per_s: copy2.capacity_rows_per_s } : null,
  };
}

/**
 * The 2-stream COPY ceiling once more, after the daemon phases, with rows and ids of its own; sets
 * `ceiling.after` and makes `ceiling.basis` the mean of the two 2-stream runs.
 */
export async function measureCeilingAgain(
  ceiling: CeilingResult,
  db: BenchDb,
  schema: string,
  totalRows: number,
  cores: number,
  kind: IdKind,
  log: (line: string) => void,
): Promise<void> {
  const stream = benchStream();
  const sql = copyStatement(
    schema,
    stream.table,
    stream.columns.map((c) => c.name),
  );
  const chunks = chunk(prepareRows(totalRows, kind).rows, ROWS_PER_CHUNK);
  const bytes = chunks.reduce((a, c) => a + c.length, 0);
  const run = await timedRun(db, schema, 2, chunks, bytes, totalRows, cores, (client, share) => copyChunks(client, sql, share));
  ceiling.after = run;
  const before = ceiling.runs.find((r) => r.streams === 2);
  const mean = (a: number | null, b: number | null) => (a === null || b === null ? (a ?? b) : Math.round((a + b) / 2));
  ceiling.basis = before
    ? {
        rows_per_s: mean(before.rows_per_s, run.rows_per_s)!,
        capacity_rows_per_s: mean(before.capacity_rows_per_s, run.capacity_rows_per_s),
      }
    : { rows_per_s: run.rows_per_s, capacity_rows_per_s: run.capacity_rows_per_s };
  log(
    `COPY ceiling again, 2 streams: ${run.rows_per_s.toLocaleString("en-US")} rows/s (${run.seconds} s); ` +
      `ratios against the mean, ${ceiling.basis.rows_per_s.toLocaleString("en-US")} rows/s`,
  );
}

/** Runs `work` over `n` connections, each on its contiguous share of `chunks`. */
async function timedRun(
  db: BenchDb,
  schema: string,
  n: number,
  chunks: readonly Buffer[],
  bytes: number,
  rows: number,
  cores: number,
  work: (client: pg.Client, share: Buffer[]) => Promise<void>,
): Promise<CeilingRun> {
  const rowsBefore = await countRows(db, schema);
  const shares: Buffer[][] = Array.from({ length: n }, () => []);
  chunks.forEach((c, i) => shares[Math.floor((i * n) / chunks.length)].push(c));
  const clients = await Promise.all(shares.map(() => connect(db.url)));
  let seconds: number;
  let cpu: CpuShare;
  let dbBefore: DbMark | null;
  let clientS = 0;
  let dbAfter: DbMark | null;
  try {
    dbBefore = await markDb(db);
    const meter = new CpuMeter(null, db.postmasterPid());
    const ownBefore = process.cpuUsage();
    const started = performance.now();
    await Promise.all(shares.map((share, i) => work(clients[i], share)));
    seconds = (performance.now() - started) / 1000;
    const own = process.cpuUsage(ownBefore);
    clientS = (own.user + own.system) / 1e6;
    // Read while the backends live: an exiting backend's CPU moves to the postmaster only once reaped.
    cpu = meter.read(cores);
    dbAfter = await markDb(db);
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  }
  const pgUs = cpu.postgres_cores === null ? null : Math.round(((cpu.postgres_cores * cpu.wall_s) / rows) * 1e7) / 10;
  const clientUs = Math.round((clientS / rows) * 1e7) / 10;
  return {
    streams: n,
    rows,
    seconds: Math.round(seconds * 1000) / 1000,
    rows_per_s: Math.round(rows / seconds),
    mib_per_s: Math.round((bytes / 2 ** 20 / seconds) * 10) / 10,
    rows_verified: (await countRows(db, schema)) - rowsBefore,
    cpu,
    pg_us_per_row: pgUs,
    client_us_per_row: clientUs,
    capacity_rows_per_s: pgUs === null ? null : Math.round((cores * 1e6) / (pgUs + clientUs)),
    db: dbDelta(dbBefore, dbAfter),
  };
}

/**
 * The bench's PostgreSQL: an embedded cluster in a temporary directory (removed afterwards), or the server
 * of DATABASE_URL. Either way the run gets a fresh database of its own, dropped at the end, unless
 * BENCH_DATABASE names one on the DATABASE_URL server: that database is created when missing and kept, so
 * a re-run finds its id state already pre-filled (docs/performance.md#running-it). The bench changes no
 * server setting: PostgreSQL runs with its stock checkpoint settings.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { startEmbeddedDb, type EmbeddedDb } from "../src/storage/embedded-db";
import { quoteIdent } from "../src/shared/sql-identifiers";

export interface BenchDb {
  /** URL of the fresh database. */
  url: string;
  embedded: boolean;
  /** The postmaster's pid when it runs here (embedded), for CPU accounting. */
  postmasterPid(): number | null;
  /** PostgreSQL version string. */
  version: string;
  query<T extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<T>>;
  close(): Promise<void>;
}

function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

/**
 * A DATABASE_URL server on this machine: its postmaster (the parent of our backend), so its CPU can be
 * accounted like the embedded one's. Null for a remote server or when /proc does not show it.
 */
async function findLocalPostmaster(client: pg.Client, url: string): Promise<number | null> {
  const host = new URL(url).hostname;
  if (!["127.0.0.1", "localhost", "::1", "[::1]", ""].includes(host)) return null;
  try {
    const backend = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    const stat = fs.readFileSync(`/proc/${backend}/stat`, "utf8");
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const comm = fs.readFileSync(`/proc/${ppid}/comm`, "utf8").trim();
    return comm.startsWith("postgres") ? ppid : null;
  } catch {
    return null;
  }
}

/**
 * What a full run leaves in its database at the end (2026-12-05: 60-70 million ids, ~50 million events with their
 * index, the WAL): a server whose disk fills stops answering, and the phase running then waits it out.
 */
const FULL_RUN_GIB = 30;

function warnIfShortOfDisk(dir: string, log: (line: string) => void): void {
  const fsStats = fs.statfsSync(dir);
  const freeGib = (fsStats.bavail * fsStats.bsize) / 2 ** 30;
  if (freeGib < FULL_RUN_GIB) {
    log(`warning: ${freeGib.toFixed(1)} GiB free under ${dir}; a full run writes about ${FULL_RUN_GIB} GiB (--quick a few)`);
  }
}

export async function startBenchDb(log: (line: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<BenchDb> {
  let embedded: EmbeddedDb | null = null;
  let dir: string | null = null;
  let serverUrl = env.DATABASE_URL || null;
  const cleanup = async () => {
    if (embedded) await embedded.stop().catch(() => undefined);
    embedded = null;
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = null;
  };
  try {
    if (serverUrl === null) {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-bench-pg-"));
      warnIfShortOfDisk(dir, log);
      const started = Date.now();
      // PostgreSQL's own word on a crash or a killed backend, which the bench's clients only see as a closed connection.
      const serious = /PANIC|FATAL|terminated by signal|out of memory|was terminated/;
      embedded = await startEmbeddedDb({ dir, ephemeral: true, log: (line) => serious.test(line) && log(`postgres: ${line}`) });
      // Through the cluster's Unix-domain socket, as a daemon reaches its own embedded cluster: the ceiling and
      // the daemon phases over the same transport.
      serverUrl = embedded.localUrl;
      log(`embedded PostgreSQL ready on port ${embedded.port} in ${Date.now() - started} ms (${dir})`);
    }

    const kept = embedded === null && env.BENCH_DATABASE ? env.BENCH_DATABASE : null;
    if (embedded !== null && env.BENCH_DATABASE) log("BENCH_DATABASE ignored: it names a database to keep on the DATABASE_URL server");
    const name = kept ?? `ingestd_bench_${process.pid}_${Date.now().toString(36)}`;
    const admin = new pg.Client({ connectionString: serverUrl });
    await admin.connect();
    let version: string;
    let localPostmaster: number | null = null;
    try {
      version = (await admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0].v;
      if (embedded === null) localPostmaster = await findLocalPostmaster(admin, serverUrl);
      const exists = kept !== null && (await admin.query("SELECT 1 FROM pg_database WHERE datname = $1", [kept])).rowCount === 1;
      if (exists) log(`using the kept database ${kept}`);
      else await admin.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } catch (err) {
      throw new Error(
        `cannot create the bench database (the bench needs a database of its own; CREATEDB privilege): ${(err as Error).message}`,
      );
    } finally {
      await admin.end().catch(() => undefined);
    }
    const url = withDatabase(serverUrl, name);
    const pool = new pg.Pool({ connectionString: url, max: 2 });
    pool.on("error", () => undefined);
    const dropDatabase = async () => {
      const c = new pg.Client({ connectionString: serverUrl! });
      try {
        await c.connect();
        await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
      } finally {
        await c.end().catch(() => undefined);
      }
    };
    const isEmbedded = embedded !== null;
    return {
      url,
      embedded: isEmbedded,
      version,
      postmasterPid: () => (embedded ? (embedded.pid() ?? null) : localPostmaster),
      query: (sql, params) => pool.query(sql, params as any[]),
      async close() {
        await pool.end().catch(() => undefined);
        // An embedded cluster goes away whole; a real server keeps nothing of the run.
        if (!isEmbedded && kept === null)
          await dropDatabase().catch((err) => log(`could not drop database ${name}: ${(err as Error).message}`));
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

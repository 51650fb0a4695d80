/**
 * What remembering ids costs PostgreSQL with many already remembered: candidate id-state designs, each filled
 * with IDS random UUIDv4 ids (default 20 million), then given BATCHES batches of 5,000 new ids (as group
 * commit claims them, one transaction each), first random UUIDv4, then time-ordered UUIDv7. Reports per id:
 * the claiming backend's CPU (/proc/<pid>/stat), all PostgreSQL processes' CPU (checkpointer and WAL writer
 * included), WAL bytes and wall time. The figures and the choice are in docs/storage.md#deduplication.
 *
 *   node dist/bench/id-state-cost.js [candidate ...]     (DATABASE_URL, or an embedded PostgreSQL with stock settings)
 *
 * Candidates: text-pk (the id state before the window: one `id text PRIMARY KEY` table, plain INSERT in id
 * order), uuid-pk (one unpartitioned `uuid PRIMARY KEY` table), generations (the id state in generations
 * rotated by size, through the claim function, the maintenance run every MAINTAIN_EVERY batches, every
 * sealed generation probed), generations-filtered (the same with the sealed generations' filters
 * checked first, as a worker does, so only ids that hit one are probed).
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { streams } from "../config/streams";
import { dedupShape } from "../src/shared/dedup-sql";
import { DEFAULT_DEDUP_WINDOW_HOURS, ensureSchema } from "../src/storage/schema";
import { maintainDedupState } from "../src/storage/dedup-partitions";
import { startEmbeddedDb } from "../src/storage/embedded-db";
import { commitTarget } from "../workers/commit/commit-targets";
import { prefillIdState } from "./id-state-prefill";
import { claimIds, probeFilterHits } from "../workers/commit/id-claim";
import { IdFilters } from "../workers/commit/id-filters";
import { FilterDirectory } from "../src/storage/filter-directory";
import { dedupKey } from "../src/shared/dedup-key";
import { processCpuSeconds, treeCpuSeconds } from "./proc-stats";

const IDS = Number(process.env.IDS ?? 20_000_000);
const BATCHES = Number(process.env.BATCHES ?? 600);
const WARM_BATCHES = Number(process.env.WARM_BATCHES ?? 40);
const BATCH = 5000;
/** Batches between two maintenance passes (rotation, filters), as the daemon's 2-second check at ~100k ids/s. */
const MAINTAIN_EVERY = 40;
const SCHEMA = "idcost";
/** CPU the bench process spent checking filters, as a worker would (slots-filtered). */
let workerCheckSeconds = 0;

interface Measured {
  candidate: string;
  ids_remembered: number;
  kind: string;
  backend_us_per_id: number;
  postgres_us_per_id: number;
  wal_bytes_per_id: number;
  wall_us_per_id: number;
  /** slots-filtered: the worker's own CPU for checking the filters. */
  worker_filter_us_per_id?: number;
}

function uuidv7(): string {
  const b = crypto.randomBytes(16);
  const ms = Date.now();
  b.writeUIntBE(ms, 0, 6);
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function newIds(kind: "uuidv4" | "uuidv7"): string[] {
  const ids = new Array<string>(BATCH);
  for (let i = 0; i < BATCH; i++) ids[i] = kind === "uuidv4" ? crypto.randomUUID() : uuidv7();
  return ids;
}

interface Candidate {
  name: string;
  prepare(client: pg.Client, url: string): Promise<void>;
  /** One batch's claim, inside the caller's transaction. */
  claim(client: pg.Client, ids: string[]): Promise<void>;
  drop(client: pg.Client): Promise<void>;
}

/** A single unpartitioned table keyed by the id, filled in key order with gen_random_uuid(). */
function singleTable(name: string, type: "text" | "uuid"): Candidate {
  const table = `${SCHEMA}.${name.replace("-", "_")}`;
  return {
    name,
    async prepare(client) {
      await client.query(`DROP TABLE IF EXISTS ${table}`);
      await client.query(`CREATE TABLE ${table} (id ${type} PRIMARY KEY, stored_at timestamptz NOT NULL)`);
      for (let done = 0; done < IDS; done += 1_000_000) {
        const n = Math.min(1_000_000, IDS - done);
        await client.query(
          `INSERT INTO ${table} SELECT k, now() FROM (SELECT gen_random_uuid()::${type} AS k FROM generate_series(1, $1)) s ORDER BY k`,
          [n],
        );
      }
      await client.query(`VACUUM (ANALYZE) ${table}`);
    },
    async claim(client, ids) {
      await client.query(`INSERT INTO ${table} (id, stored_at) SELECT k, now() FROM unnest($1::${type}[]) AS u(k) ORDER BY k`, [ids]);
    },
    async drop(client) {
      await client.query(`DROP TABLE IF EXISTS ${table}`);
    },
  };
}

function generations(name: string, filtered: boolean): Candidate {
  const stream = streams.find((s) => s.name === "events")!;
  const target = commitTarget(SCHEMA, stream, 0, true);
  const d = dedupShape(SCHEMA, stream)!;
  const filters = new IdFilters(d.slots);
  const directory = new FilterDirectory(SCHEMA, [stream]);
  let batches = 0;
  /** As the front thread's maintenance publishes them (src/storage/filter-directory.ts). */
  const loadFilters = async (client: pg.Client) => {
    await directory.refresh(client);
    filters.set(directory.list());
  };
  return {
    name,
    async prepare(client, url) {
      await client.query(`DROP TABLE IF EXISTS ${d.ids}, ${d.slots}`);
      await ensureSchema(client, SCHEMA, [stream]);
      await prefillIdState(url, SCHEMA, stream, IDS, "uuidv4");
      await loadFilters(client);
    },
    async claim(client, ids) {
      // The daemon's maintenance checks for a rotation every 2 s: at about 20 batches a second, every 40.
      if (++batches % MAINTAIN_EVERY === 0) {
        await client.query("COMMIT");
        await maintainDedupState(client, SCHEMA, [stream], DEFAULT_DEDUP_WINDOW_HOURS, undefined, undefined, directory);
        await loadFilters(client);
        await client.query("BEGIN");
      }
      const keys = ids.map(dedupKey);
      if (!filtered) {
        await client.query(target.dedup!.claim, [keys, null, null, null]);
        return;
      }
      // As a worker does (workers/commit/group-commit.ts), its own CPU for the check counted apart.
      const t0 = process.cpuUsage();
      const checked = filters.check(keys);
      const used = process.cpuUsage(t0);
      workerCheckSeconds += (used.user + used.system) / 1e6;
      // The daemon probes the hits before its transaction begins; here inside it (one transaction a batch).
      await claimIds(client, target.dedup!, keys, await probeFilterHits(client, target.dedup!, checked));
    },
    async drop(client) {
      const { rows } = await client.query<{ part: string }>(`SELECT part FROM ${d.slots}`);
      await client.query(`DROP TABLE IF EXISTS ${d.ids}, ${d.slots}`);
      for (const r of rows) await client.query(`DROP TABLE IF EXISTS ${r.part}`);
    },
  };
}

const CANDIDATES: Record<string, () => Candidate> = {
  "text-pk": () => singleTable("text-pk", "text"),
  "uuid-pk": () => singleTable("uuid-pk", "uuid"),
  generations: () => generations("generations", false),
  "generations-filtered": () => generations("generations-filtered", true),
};

async function lsn(client: pg.Client): Promise<bigint> {
  const r = await client.query<{ l: string }>("SELECT pg_current_wal_lsn()::text AS l");
  const [hi, lo] = r.rows[0].l.split("/");
  return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
}

async function measure(
  client: pg.Client,
  candidate: Candidate,
  kind: "uuidv4" | "uuidv7",
  backendPid: number,
  postmasterPid: number,
): Promise<Measured> {
  const batches = Array.from({ length: BATCHES + WARM_BATCHES }, () => newIds(kind));
  const run = async (from: number, to: number) => {
    for (let b = from; b < to; b++) {
      await client.query("BEGIN");
      await candidate.claim(client, batches[b]);
      await client.query("COMMIT");
    }
  };
  await run(0, WARM_BATCHES);
  const wal0 = await lsn(client);
  const backend0 = processCpuSeconds(backendPid)!;
  const pg0 = treeCpuSeconds(postmasterPid)!;
  const t0 = performance.now();
  workerCheckSeconds = 0;
  await run(WARM_BATCHES, WARM_BATCHES + BATCHES);
  const wall = performance.now() - t0;
  const ids = BATCHES * BATCH;
  const wal = Number((await lsn(client)) - wal0);
  return {
    candidate: candidate.name,
    ids_remembered: IDS,
    kind,
    backend_us_per_id: +(((processCpuSeconds(backendPid)! - backend0) * 1e6) / ids).toFixed(2),
    postgres_us_per_id: +(((treeCpuSeconds(postmasterPid)! - pg0) * 1e6) / ids).toFixed(2),
    wal_bytes_per_id: Math.round(wal / ids),
    wall_us_per_id: +((wall * 1000) / ids).toFixed(2),
    ...(workerCheckSeconds > 0 ? { worker_filter_us_per_id: +((workerCheckSeconds * 1e6) / ids).toFixed(2) } : {}),
  };
}

async function main(): Promise<void> {
  const names = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(CANDIDATES);
  let url = process.env.DATABASE_URL ?? "";
  let stop: (() => Promise<void>) | null = null;
  if (url === "") {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-idcost-"));
    const db = await startEmbeddedDb({ dir });
    url = db.url;
    stop = async () => {
      await db.remove().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    };
  }
  const client = new pg.Client({ connectionString: url, application_name: "ingestd-bench-idcost" });
  await client.connect();
  const results: Measured[] = [];
  try {
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${SCHEMA}`);
    const backendPid = (await client.query<{ p: number }>("SELECT pg_backend_pid() AS p")).rows[0].p;
    const cp = await client.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
    const postmasterPid = Number(fs.readFileSync(`/proc/${cp.rows[0].pid}/stat`, "utf8").split(") ")[1].split(" ")[1]);
    for (const name of names) {
      const make = CANDIDATES[name];
      if (!make) throw new Error(`unknown candidate ${name}; known: ${Object.keys(CANDIDATES).join(", ")}`);
      const candidate = make();
      const t0 = performance.now();
      await candidate.prepare(client, url);
      await client.query("CHECKPOINT");
      console.error(`${name}: ${IDS} ids remembered in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
      for (const kind of ["uuidv4", "uuidv7"] as const) {
        const m = await measure(client, candidate, kind, backendPid, postmasterPid);
        results.push(m);
        console.error(JSON.stringify(m));
      }
      await candidate.drop(client);
    }
  } finally {
    await client.end().catch(() => undefined);
    await stop?.();
  }
  console.log(JSON.stringify(results, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

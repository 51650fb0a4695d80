/**
 * Deduplication with a window and the retention of ingestd's own tables (docs/storage.md#deduplication,
 * docs/storage.md#retention-of-ingestds-own-tables): duplicates within a request, across requests, workers,
 * daemons, a restart and the id state's generations (including a claim racing a rotation, and rotations under
 * load); an id older than the window is accepted again; retention drops whole generations, never the open
 * one; old-shape tables are migrated at start. Ids "stored long ago" are made by backdating: the test creates
 * sealed generations with past times and puts keys in them, as the daemon would have then.
 * Real daemons, real PostgreSQL; the rows that landed are counted.
 */
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import pg from "pg";
import { streams } from "../config/streams";
import { dedupKey } from "../src/shared/dedup-key";
import {
  DEDUP_NOT_ENTERED,
  dedupClaimFunctionDdl,
  dedupEnterFunctionDdl,
  dedupProbeFunctionDdl,
  dedupShape,
} from "../src/shared/dedup-sql";
import {
  createGeneration,
  dedupStateDdl,
  ensureDedupGenerations,
  maintainDedupGenerations,
  maintainDedupState,
  rotateDedupGeneration,
} from "../src/storage/dedup-partitions";
import { OpenGenerationFilters } from "../src/storage/open-generation-filters";
import { locked } from "../src/storage/partitions";
import { BOOKKEEPING_TABLES, ensureDayPartitions, maintainBookkeeping } from "../src/storage/bookkeeping-partitions";
import { DedupFilter, DedupFilterFull, fingerprint, hashKey } from "../src/shared/dedup-filter";
import { FuseFilter, SHARD_KEYS, sealFilter } from "../src/shared/fuse-filter";
import { filterFrom } from "../src/shared/id-state-filter";
import crypto from "node:crypto";
import { once } from "node:events";
import path from "node:path";
import { Worker } from "node:worker_threads";
import { FilterDirectory } from "../src/storage/filter-directory";
import { FilterReaders } from "../src/shared/filter-readers";
import { IdFilters, type FilterCheck } from "../workers/commit/id-filters";
import { claimIds, oneTripClaim, probeFilterHits } from "../workers/commit/id-claim";
import { copyIn } from "../workers/commit/copy-in";
import { commitTarget } from "../workers/commit/commit-targets";
import { GROUP_GENERATIONS, keysAtMost } from "../src/storage/dedup-filters";
import { metric } from "./faults-helpers";
import { useTestDb } from "./fixture";
import { event, post, waitFor, type Daemon } from "./harness";

/** A database; the tests start their daemons (stopped in after()). */
const fx = useTestDb();
const eventsStream = streams.find((s) => s.name === "events")!;
const HOUR = 3600_000;

function daemon(env: Record<string, string> = {}, url = fx.db.url): Promise<Daemon> {
  return fx.startDaemon({ databaseUrl: url, env });
}

async function send(d: Daemon, records: Record<string, unknown>[]): Promise<{ accepted: number; duplicates: number; rejected: number }> {
  const res = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(records));
  assert.equal(res.status, 200, res.text);
  return res.json;
}

async function stored(prefix: string, url = fx.db.url): Promise<{ rows: number; distinct: number }> {
  return withClient(url, async (c) => {
    const { rows } = await c.query(
      `SELECT count(*)::int AS rows, count(DISTINCT event_id)::int AS distinct FROM events WHERE event_id LIKE $1 || '%'`,
      [prefix],
    );
    return rows[0];
  });
}

async function withClient<T>(url: string, work: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await work(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

let dbCounter = 0;
async function freshDatabase(): Promise<string> {
  const name = `dedup_window_${process.pid}_${++dbCounter}`;
  await withClient(fx.db.server.url, (c) => c.query(`CREATE DATABASE ${name}`));
  return fx.db.server.url.replace(/\/postgres$/, `/${name}`);
}

/** A generation sealed `hoursAgo` hours ago after an hour open, as the daemon would have left it; its partition. */
async function pastGeneration(c: pg.ClientBase, hoursAgo: number): Promise<string> {
  const sealedAt = new Date(Date.now() - hoursAgo * HOUR);
  const openedAt = new Date(sealedAt.getTime() - HOUR);
  return (await locked(c, () => createGeneration(c, "public", eventsStream, { openedAt, sealedAt }))).part;
}

/** Puts ids into a generation's partition as if first stored while it was open. */
async function remember(c: pg.ClientBase, part: string, ids: string[]): Promise<void> {
  const gen = (await c.query(`SELECT gen FROM ${dedupShape("public", eventsStream)!.slots} WHERE part = $1`, [part])).rows[0].gen;
  await c.query(`INSERT INTO ${part} (id_key, gen) SELECT unnest($1::uuid[]), $2`, [ids.map(dedupKey), gen]);
}

/** A schema holding a stream's id state as the daemon builds it: its tables, claim functions and first generations. */
async function idStateSchema(c: pg.ClientBase, schema: string, stream: typeof eventsStream): Promise<void> {
  await c.query(`CREATE SCHEMA ${schema}`);
  for (const s of dedupStateDdl(schema, stream)) await c.query(s);
  await c.query(dedupClaimFunctionDdl(schema, stream)!);
  await c.query(dedupProbeFunctionDdl(schema, stream)!);
  await c.query(dedupEnterFunctionDdl(schema, stream)!);
  await locked(c, () => ensureDedupGenerations(c, schema, stream));
}

describe("duplicates are found wherever the first copy came from", () => {
  let d: Daemon;
  before(async () => {
    d = await daemon({ WORKERS: "2" });
  });

  test("within a request and across requests: the first copy is stored, the others are duplicates", async () => {
    const first = await send(d, [event("w-req-1"), event("w-req-2"), event("w-req-1")]);
    assert.deepEqual([first.accepted, first.duplicates], [2, 1]);
    const again = await send(d, [event("w-req-2"), event("w-req-3")]);
    assert.deepEqual([again.accepted, again.duplicates], [1, 1]);
    assert.deepEqual(await stored("w-req-"), { rows: 3, distinct: 3 });
  });

  test("across the two workers: the same 2,000 ids sent in 40 concurrent requests are stored once", async () => {
    const ids = Array.from({ length: 2000 }, (_, i) => `w-wk-${i}`);
    const bodies = Array.from({ length: 40 }, (_, k) => ids.slice((k % 20) * 100, (k % 20) * 100 + 100).map((id) => event(id)));
    const answers = await Promise.all(bodies.map((b) => send(d, b)));
    assert.equal(
      answers.reduce((n, a) => n + a.accepted, 0),
      2000,
    );
    assert.equal(
      answers.reduce((n, a) => n + a.duplicates, 0),
      2000,
    );
    assert.deepEqual(await stored("w-wk-"), { rows: 2000, distinct: 2000 });
  });

  test("across two daemons on one database, and across a restart", async () => {
    const other = await daemon();
    const [a, b] = await Promise.all([send(d, [event("w-two-1"), event("w-two-2")]), send(other, [event("w-two-2"), event("w-two-1")])]);
    assert.equal(a.accepted + b.accepted, 2);
    assert.equal(a.duplicates + b.duplicates, 2);
    await other.stop();
    const restarted = await daemon();
    const later = await send(restarted, [event("w-two-1"), event("w-req-3"), event("w-two-3")]);
    assert.deepEqual([later.accepted, later.duplicates], [1, 2]);
    await restarted.stop();
    assert.deepEqual(await stored("w-two-"), { rows: 3, distinct: 3 });
  });

  test("across the id state's generations: ids first stored 30 and 150 hours ago (sealed generations, with filters) are duplicates", async () => {
    await withClient(fx.db.url, async (c) => {
      await remember(c, await pastGeneration(c, 30), ["w-old-30"]);
      await remember(c, await pastGeneration(c, 150), ["w-old-150"]);
    });
    // A daemon started now holds the sealed generations' filters and publishes them to its workers. Which
    // daemon builds them is a race (`d` checks the id state every 2 s too): wait for what this one holds.
    const fresh = await daemon();
    await waitFor("filters held", async () => (await metric(fresh.base, "ingestd_dedup_filtered_generations")) >= 2, 20_000);
    const filtered = await withClient(fx.db.url, (c) =>
      c.query(`SELECT count(*)::int AS n FROM events_dedup_slots WHERE filter_v3 IS NOT NULL`),
    );
    assert.ok(filtered.rows[0].n >= 2, "the sealed generations have filters");
    // Many new ids in the same request: the filter lets them through, the two old ones hit and are probed.
    const fresh1 = Array.from({ length: 500 }, (_, i) => event(`w-new-${i}`));
    const answer = await send(fresh, [...fresh1, event("w-old-30"), event("w-old-150")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [500, 2]);
    assert.deepEqual(await stored("w-old-"), { rows: 0, distinct: 0 });
    await fresh.stop();
  });
});

describe("the sealed generations' filters", () => {
  test("the front thread publishes them once, in shared memory, and a worker thread checks with them", async () => {
    const url = await freshDatabase();
    const d = await daemon({}, url);
    await d.stop();
    const directory = new FilterDirectory("public", [eventsStream]);
    const worker = new Worker(
      `const { parentPort } = require("node:worker_threads");
       const { IdFilters, followPublishedFilters } = require(${JSON.stringify(path.join(__dirname, "../workers/commit/id-filters.js"))});
       const filters = new IdFilters(${JSON.stringify(dedupShape("public", eventsStream)!.slots)});
       followPublishedFilters([filters], null);
       parentPort.on("message", (keys) => parentPort.postMessage(filters.check(keys)));
       parentPort.postMessage("ready");`,
      { eval: true },
    );
    try {
      await once(worker, "message");
      await withClient(url, async (c) => {
        await remember(c, await pastGeneration(c, 30), ["pub-old-30"]);
        await remember(c, await pastGeneration(c, 150), ["pub-old-150"]);
        await maintainDedupState(c, "public", [eventsStream], 168);
        await directory.refresh(c);
      });
      assert.deepEqual(
        directory.list().map((f) => f.gens.length),
        [2],
        "both sealed generations are held, in their group's filter",
      );
      assert.ok(directory.list().every((f) => f.words instanceof SharedArrayBuffer));
      directory.publish();
      let checked: FilterCheck | undefined;
      await waitFor(
        "the worker has the filters",
        async () => {
          worker.postMessage([dedupKey("pub-old-30"), dedupKey("pub-old-150"), dedupKey("pub-new")]);
          checked = (await once(worker, "message"))[0] as FilterCheck;
          return checked.covered !== null;
        },
        5_000,
      );
      assert.equal(checked!.covered!.length, 2, "the worker checked both generations");
      assert.deepEqual(
        [...new Set(checked!.maybe)].sort(),
        [dedupKey("pub-old-150"), dedupKey("pub-old-30")].sort(),
        "each old id hits the group's filter (to be probed in both its generations), the new one misses it",
      );
    } finally {
      await worker.terminate();
      directory.close();
    }
  });

  test("a worker started after the last publication gets the filters at once, without waiting for the next pass", async () => {
    const url = await freshDatabase();
    const d = await daemon({}, url);
    await d.stop();
    const directory = new FilterDirectory("public", [eventsStream]);
    await withClient(url, async (c) => {
      await remember(c, await pastGeneration(c, 30), ["late-old"]);
      await maintainDedupState(c, "public", [eventsStream], 168);
      await directory.refresh(c);
    });
    directory.publish(); // before the worker exists: a BroadcastChannel keeps nothing for it
    const worker = new Worker(
      `const { parentPort } = require("node:worker_threads");
       const { IdFilters, followPublishedFilters } = require(${JSON.stringify(path.join(__dirname, "../workers/commit/id-filters.js"))});
       const filters = new IdFilters(${JSON.stringify(dedupShape("public", eventsStream)!.slots)});
       followPublishedFilters([filters], null);
       parentPort.on("message", (keys) => parentPort.postMessage(filters.check(keys)));`,
      { eval: true },
    );
    try {
      let checked: FilterCheck | undefined;
      await waitFor(
        "the late worker has the filters",
        async () => {
          worker.postMessage([dedupKey("late-old"), dedupKey("late-new")]);
          checked = (await once(worker, "message"))[0] as FilterCheck;
          return checked.covered !== null;
        },
        5_000,
      );
      assert.equal(checked!.covered!.length, 1);
      assert.deepEqual(checked!.maybe, [dedupKey("late-old")]);
    } finally {
      await worker.terminate();
      directory.close();
    }
  });

  test("each sealed generation joins a group filter as its own is built, GROUP_GENERATIONS a group, checked instead of theirs; their ids stay duplicates", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const ids = Array.from({ length: GROUP_GENERATIONS + 1 }, (_, i) => `grp-old-${i}`);
    const directory = new FilterDirectory("public", [eventsStream]);
    try {
      await withClient(url, async (c) => {
        for (let i = 0; i < ids.length; i++) await remember(c, await pastGeneration(c, ids.length - i), [ids[i]]);
        await maintainDedupState(c, "public", [eventsStream], 168);
        const groups = await c.query(`SELECT gens FROM events_dedup_groups_v3 ORDER BY grp`);
        assert.deepEqual(
          groups.rows.map((g) => g.gens.length),
          [GROUP_GENERATIONS, 1],
          "the oldest generations in one group, the newest opening the next",
        );
        await directory.refresh(c);
      });
      const published = directory.list();
      assert.deepEqual(
        published.map((f) => f.gens.length).sort((a, b) => a - b),
        [1, GROUP_GENERATIONS],
        "the workers get the groups' filters, not the grouped generations' own",
      );
      const filters = new IdFilters(dedupShape("public", eventsStream)!.slots);
      filters.set(published);
      const checked = filters.check(ids.map(dedupKey));
      assert.equal(checked.covered!.length, GROUP_GENERATIONS + 1, "all sealed generations are covered");
      for (const id of ids) assert.ok(checked.maybe!.includes(dedupKey(id)), `${id} hits a filter`);
    } finally {
      directory.close();
    }
    const d = await daemon({}, url);
    await waitFor("filters published", async () => (await metric(d.base, "ingestd_dedup_filters")) === 2, 20_000);
    const fresh = Array.from({ length: 100 }, (_, i) => event(`grp-new-${i}`));
    const answer = await send(d, [...fresh, ...ids.map((id) => event(id))]);
    assert.deepEqual([answer.accepted, answer.duplicates], [100, ids.length]);
    await d.stop();
  });

  test("a generation sealed later joins the open group, whose filter the process extends and holds byte for byte as stored; one without room for the next generation's keys is left, and another started", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const directory = new FilterDirectory("public", [eventsStream]);
    const many = Array.from({ length: 3_000 }, () => crypto.randomUUID());
    try {
      const groups = await withClient(url, async (c) => {
        const pass = async () => {
          await maintainDedupState(c, "public", [eventsStream], 168, undefined, undefined, directory);
          await directory.refresh(c);
          return directory.collections;
        };
        await remember(c, await pastGeneration(c, 30), ["open-1"]);
        assert.equal(await pass(), 1, "a filter built and written: a collection asked for (the buffers of its write)");
        assert.deepEqual(
          directory.list().map((f) => f.gens.length),
          [1],
        );
        assert.equal(await pass(), 1, "nothing new: the same filter held, no collection");
        await remember(c, await pastGeneration(c, 20), ["open-2"]);
        assert.equal(await pass(), 2, "the group's next version: its previous one let go, a collection asked for");
        const joined = await c.query<{ gens: number[]; filter: Buffer }>(`SELECT gens, filter_v3 AS filter FROM events_dedup_groups_v3`);
        assert.deepEqual(
          joined.rows.map((g) => g.gens.length),
          [2],
          "the second generation joined the first's group",
        );
        const held = directory.list();
        assert.equal(held.length, 1);
        assert.ok(Buffer.from(held[0].words).equals(joined.rows[0].filter), "the group's filter held is the one stored, byte for byte");
        // Sized for GROUP_GENERATIONS of its first generation's room (one page, 157 keys): 3,000 keys do not fit.
        await remember(c, await pastGeneration(c, 10), [...many, "open-3"]);
        await pass();
        return (await c.query(`SELECT gens FROM events_dedup_groups_v3 ORDER BY grp`)).rows;
      });
      assert.deepEqual(
        groups.map((g) => g.gens.length),
        [2, 1],
        "the larger generation started a group of its own",
      );
      const filters = new IdFilters(dedupShape("public", eventsStream)!.slots);
      filters.set(directory.list());
      const ids = ["open-1", "open-2", "open-3", ...many];
      const checked = filters.check(ids.map(dedupKey));
      assert.equal(checked.covered!.length, 3);
      const hit = new Set(checked.maybe);
      assert.equal(ids.filter((id) => !hit.has(dedupKey(id))).length, 0, "every stored id hits a filter held");
    } finally {
      directory.close();
    }
  });

  test("the open generation's filters are filled while it is open and completed at its seal: they hold every key it took (a subtransaction's running during a fill too), and its group's new version is published before it is stored", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const d = dedupShape("public", eventsStream)!;
    const directory = new FilterDirectory("public", [eventsStream]);
    const prefills = new OpenGenerationFilters();
    const uuids = (n: number) => Array.from({ length: n }, () => crypto.randomUUID());
    try {
      await withClient(url, (c) =>
        withClient(url, async (other) => {
          // A sealed generation to size the open one's filters from (and a group for it to join).
          await remember(c, await pastGeneration(c, 30), uuids(2_000));
          const pass = (hotBytes: number) =>
            maintainDedupGenerations(c, "public", [eventsStream], 168, undefined, hotBytes, directory, prefills);
          await pass(2 ** 40);
          const open = (
            await c.query<{ gen: number; part: string }>(
              `SELECT gen, part FROM ${d.slots} WHERE opened_at IS NOT NULL AND sealed_at IS NULL`,
            )
          ).rows[0];
          const put = (client: pg.Client, ids: string[]) =>
            client.query(`INSERT INTO ${open.part} (id_key, gen) SELECT unnest($1::uuid[]), $2`, [ids.map(dedupKey), open.gen]);
          const early = uuids(300);
          const running = uuids(300);
          const late = uuids(300);
          await put(c, early);
          await other.query("BEGIN");
          await other.query("SAVEPOINT claim");
          await put(other, running);
          await pass(2 ** 40); // reads `early`; `running` is invisible to its snapshot
          await other.query("RELEASE SAVEPOINT claim");
          await other.query("COMMIT");
          await pass(2 ** 40); // reads `running`: its transaction was the oldest running at the last read
          await put(c, late);
          // Sealed by another daemon, say: the seal's build reads `late` alone.
          await rotateDedupGeneration(c, "public", eventsStream, 168, 0);
          const published = directory.list().length;
          await pass(2 ** 40);
          assert.equal(prefills.completed, 1, "the seal took the prefill over");
          const own = await c.query<{ filter: Buffer }>(`SELECT filter_v3 AS filter FROM ${d.slots} WHERE gen = $1`, [open.gen]);
          const ownFilter = new DedupFilter(own.rows[0].filter);
          const held = directory.list().find((f) => f.gens.includes(open.gen));
          assert.ok(
            held !== undefined && directory.list().length === published,
            "the group's new version replaced its last, without a refresh",
          );
          const groupFilter = new DedupFilter(held.words);
          for (const id of [...early, ...running, ...late]) {
            assert.ok(ownFilter.has(dedupKey(id)), `${id} in the generation's filter`);
            assert.ok(groupFilter.has(dedupKey(id)), `${id} in its group's`);
          }
          const group = await c.query<{ gens: number[]; filter: Buffer }>(`SELECT gens, filter_v3 AS filter FROM ${d.groups}`);
          assert.equal(group.rowCount, 1, "the generation joined the past one's group");
          assert.ok(group.rows[0].filter.equals(Buffer.from(held.words)), "the group's filter stored is the one published, byte for byte");
        }),
      );
    } finally {
      directory.close();
    }
  });

  test("the open group's next copy reuses a buffer no longer published only once every worker has taken a later publication", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const readers = new FilterReaders();
    const directory = new FilterDirectory("public", [eventsStream], Number.POSITIVE_INFINITY, readers);
    // A real worker thread following the publications, and a reader in this thread that takes them only when told.
    const worker = new Worker(
      `const { parentPort, workerData } = require("node:worker_threads");
       const { IdFilters, followPublishedFilters } = require(${JSON.stringify(path.join(__dirname, "../workers/commit/id-filters.js"))});
       const { FilterReaders } = require(${JSON.stringify(path.join(__dirname, "../src/shared/filter-readers.js"))});
       const filters = new IdFilters(${JSON.stringify(dedupShape("public", eventsStream)!.slots)});
       followPublishedFilters([filters], new FilterReaders(workerData));
       parentPort.on("message", (keys) => parentPort.postMessage(filters.check(keys)));
       parentPort.postMessage("ready");`,
      { eval: true, workerData: readers.buffer },
    );
    const slow = readers.join();
    const ids: string[] = [];
    /** The worker's check of every id so far, once it covers `gens` generations. */
    const workerCheck = async (gens: number): Promise<FilterCheck> => {
      let checked: FilterCheck | undefined;
      await waitFor(
        `the worker has taken the filters of ${gens} generations`,
        async () => {
          worker.postMessage(ids.map(dedupKey));
          checked = (await once(worker, "message"))[0] as FilterCheck;
          return checked.covered?.length === gens;
        },
        5_000,
      );
      return checked!;
    };
    try {
      await once(worker, "message");
      await withClient(url, async (c) => {
        /** Remembers one more id in a generation of its own, builds its filters, publishes; the open group's buffer. */
        const generation = async (hoursAgo: number): Promise<SharedArrayBuffer> => {
          ids.push(`reuse-${ids.length}`);
          await remember(c, await pastGeneration(c, hoursAgo), [ids[ids.length - 1]]);
          await maintainDedupState(c, "public", [eventsStream], 168, undefined, undefined, directory);
          await directory.refresh(c);
          directory.publish();
          const held = directory.list();
          assert.equal(held.length, 1, "one group holds every generation");
          const stored = await c.query<{ filter: Buffer }>(`SELECT filter_v3 AS filter FROM events_dedup_groups_v3`);
          assert.ok(Buffer.from(held[0].words).equals(stored.rows[0].filter), "the group's filter held is the one stored");
          return held[0].words;
        };
        const made = [await generation(40), await generation(30)];
        await workerCheck(2);
        // `slow` has taken no publication: the first buffer, published no more, may still be read by it.
        made.push(await generation(20));
        assert.equal(new Set(made).size, 3, "no buffer reused while a worker may read it");
        await workerCheck(3);
        slow.took(directory.lastPublication);
        const reused = await generation(10);
        assert.ok(made.includes(reused), "a buffer every worker has left is filled again instead of a new one");
      });
      const checked = await workerCheck(4);
      assert.deepEqual([...new Set(checked.maybe)].sort(), ids.map(dedupKey).sort(), "every id hits the reused buffer's filter");
    } finally {
      await worker.terminate();
      directory.close();
    }
  });

  test("filter readers: reuse waits for every registered reader, an exited one counts as past, too many stop it", () => {
    const readers = new FilterReaders();
    const [a, b] = [readers.join(), readers.join()];
    assert.equal(readers.allPast(1), false, "no reader has taken a publication");
    a.took(1);
    assert.equal(readers.allPast(1), false, "one has not");
    b.took(2);
    assert.equal(readers.allPast(1), true);
    assert.equal(readers.allPast(2), false);
    const words = new Int32Array(readers.buffer);
    words[1] = -1; // what a's exit stores
    assert.equal(readers.allPast(2), true, "an exited reader never holds reuse back");
    words[0] = 64; // 64 slots claimed (a pool restarted that often): the next reader gets none
    readers.join().took(99);
    assert.equal(readers.allPast(2), false, "a reader without a slot is unregistered: nothing is reused");
  });

  test("a daemon publishes the filters that exist before it builds the missing ones, and opens its port once they are loaded", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const pending = await withClient(url, async (c) => {
      await remember(c, await pastGeneration(c, 50), ["pub-first-built"]);
      await maintainDedupState(c, "public", [eventsStream], 168);
      const part = await pastGeneration(c, 40);
      await remember(c, part, ["pub-first-pending"]);
      return part;
    });
    // The missing filter cannot be built while this lock is held (its build reads the partition).
    const blocker = new pg.Client({ connectionString: url });
    await blocker.connect();
    await blocker.query("BEGIN");
    await blocker.query(`LOCK TABLE ${pending} IN ACCESS EXCLUSIVE MODE`);
    let d: Daemon | undefined;
    try {
      d = await daemon({}, url);
      // Its port is open: the filter that existed is loaded already, not some time after.
      assert.equal(await metric(d.base, "ingestd_dedup_filters"), 1, "the existing filter was loaded before the port opened");
      const missing = await withClient(url, (c) =>
        c.query(`SELECT count(*)::int AS n FROM events_dedup_slots WHERE part = $1 AND filter_v3 IS NULL`, [pending]),
      );
      assert.equal(missing.rows[0].n, 1, "published while the other generation's filter was not built yet");
    } finally {
      await blocker.query("ROLLBACK").catch(() => undefined);
      await blocker.end();
    }
    const started = d!;
    await waitFor(
      "the missing filter built and published",
      async () => (await metric(started.base, "ingestd_dedup_filtered_generations")) === 2,
      20_000,
    );
    const answer = await send(started, [event("pub-first-built"), event("pub-first-pending"), event("pub-first-new")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [1, 2]);
    await started.stop();
  });

  test("a filter larger than one load slice reaches shared memory byte for byte (read by binary COPY, slice by slice)", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    // Sized for 600,000 keys: 1.2 MiB, two slices of 1 MiB. Its few keys sit at random; the rest are zeros.
    const big = new DedupFilter(600_000);
    for (let i = 0; i < 1_000; i++) big.add(dedupKey(`slice-${i}`));
    const directory = new FilterDirectory("public", [eventsStream]);
    try {
      await withClient(url, async (c) => {
        const part = await pastGeneration(c, 30);
        await remember(c, part, ["slice-0"]);
        await maintainDedupState(c, "public", [eventsStream], 168);
        // Its group's filter is the one held (the generation's own is not loaded once grouped).
        await c.query(`UPDATE events_dedup_groups_v3 SET filter_v3 = $1`, [big.buffer()]);
        await directory.refresh(c);
      });
      const held = directory.list();
      assert.equal(held.length, 1);
      assert.ok(big.byteLength > 1 << 20, "larger than a slice");
      assert.ok(Buffer.from(held[0].words).equals(big.buffer()), "the loaded filter is the stored one, byte for byte");
    } finally {
      directory.close();
    }
  });

  test("a filter never misses a key it holds, lets about 0.011% of others through, and survives its bytes", () => {
    const held = Array.from({ length: 100_000 }, (_, i) => (i % 2 === 0 ? crypto.randomUUID() : dedupKey(`id-${i}`)));
    const filter = new DedupFilter(held.length);
    for (const k of held) filter.add(k);
    const copy = new DedupFilter(Uint8Array.from(filter.bytes()));
    assert.equal(held.filter((k) => !copy.has(k)).length, 0, "no false negative");
    const others = Array.from({ length: 100_000 }, () => crypto.randomUUID());
    const rate = others.filter((k) => copy.has(k)).length / others.length;
    assert.ok(rate > 0 && rate < 0.0003, `false-positive rate ${rate}`);
    const shared = new DedupFilter(copy.shared);
    assert.equal(held.filter((k) => !shared.has(k)).length, 0, "the memory a worker is published answers alike");
    assert.throws(() => new DedupFilter(new Uint8Array(100)), /not a dedup filter of format 3/);
    assert.throws(() => new DedupFilter(new Uint8Array(64 * 64)), /not a dedup filter of format 3/, "a format-2 filter is refused");
  });

  test("a group's filter of millions of keys keeps its rate: keys collide only on 64 bits of hash", () => {
    // Format 1 derived every bit from one 32-bit hash: over 2 million keys, 0.05% of other keys matched one of
    // them outright, and the rate was 0.23% here (docs/storage.md#filter-format). Filled to its sized load.
    const filter = new DedupFilter(2_000_000);
    for (let i = 0; i < 2_000_000; i++) filter.add(crypto.randomUUID());
    let hits = 0;
    for (let i = 0; i < 400_000; i++) if (filter.has(crypto.randomUUID())) hits++;
    assert.ok(hits / 400_000 < 0.0003, `false-positive rate ${hits / 400_000}`);
  });

  test("the maintenance reads a generation's keys in binary and builds the very filter their text gives, group filters too", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    // Ids that are UUIDs and ids that are not (their keys are digests), enough for many COPY chunks.
    const ids = Array.from({ length: GROUP_GENERATIONS * 6_000 }, (_, i) => (i % 3 === 0 ? `bin-${i}` : crypto.randomUUID()));
    const perGen = ids.length / GROUP_GENERATIONS;
    await withClient(url, async (c) => {
      for (let g = 0; g < GROUP_GENERATIONS; g++) {
        await remember(c, await pastGeneration(c, GROUP_GENERATIONS - g), ids.slice(g * perGen, (g + 1) * perGen));
      }
      await maintainDedupState(c, "public", [eventsStream], 168);
      const slots = dedupShape("public", eventsStream)!.slots;
      const { rows } = await c.query<{ gen: number; part: string; filter: Buffer }>(
        `SELECT gen, part, filter_v3 AS filter FROM ${slots} WHERE sealed_at IS NOT NULL ORDER BY gen`,
      );
      assert.equal(rows.length, GROUP_GENERATIONS);
      for (const [g, r] of rows.entries()) {
        // Sized from the heap, not counted: never short, over by less than a page of rows.
        const room = await keysAtMost(c, [r.part]);
        assert.ok(room >= perGen && room < perGen + 157, `generation ${r.gen}: room for ${room} keys, holding ${perGen}`);
        const expected = new DedupFilter(room);
        for (const id of ids.slice(g * perGen, (g + 1) * perGen)) expected.add(dedupKey(id));
        assert.ok(
          r.filter.equals(expected.bytes()),
          `generation ${r.gen}: the filter built from the binary COPY equals the one from the keys' text`,
        );
      }
      const group = await c.query<{ filter: Buffer }>(`SELECT filter_v3 AS filter FROM events_dedup_groups_v3`);
      assert.equal(group.rowCount, 1);
      // Sized for GROUP_GENERATIONS of its first generation; each generation's keys added to a copy of it.
      let expected = new DedupFilter(GROUP_GENERATIONS * (await keysAtMost(c, [rows[0].part])));
      for (let g = 0; g < GROUP_GENERATIONS; g++) {
        if (g > 0) expected = new DedupFilter(expected.bytes());
        for (const id of ids.slice(g * perGen, (g + 1) * perGen)) expected.add(dedupKey(id));
      }
      assert.ok(group.rows[0].filter.equals(expected.bytes()), "the group's filter equals the one from all its keys' text");
    });
  });

  test("filters of formats 1 and 2 (columns filter, filter_v2; tables events_dedup_groups, _groups_v2) are never read: format 3 is built beside them, their ids stay duplicates, the old groups go with their generations", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const part = await withClient(url, async (c) => {
      const sealed = await pastGeneration(c, 30);
      await remember(c, sealed, ["fmt1-old"]);
      // What daemons of formats 1 and 2 leave: a filter per generation in `filter` and `filter_v2` (here all
      // zeros: read with any hash, it would let the stored id through as new) and their group filters, each of
      // a generation long gone.
      for (const [column, groups] of [
        ["filter", "events_dedup_groups"],
        ["filter_v2", "events_dedup_groups_v2"],
      ]) {
        await c.query(`ALTER TABLE events_dedup_slots ADD COLUMN ${column} bytea`);
        await c.query(`UPDATE events_dedup_slots SET ${column} = $1 WHERE part = $2`, [Buffer.alloc(64 * 64), sealed]);
        await c.query(`CREATE TABLE ${groups} (grp integer PRIMARY KEY, gens integer[] NOT NULL, ${column} bytea NOT NULL)`);
        await c.query(`INSERT INTO ${groups} VALUES (1, '{-7}', $1)`, [Buffer.alloc(64)]);
      }
      return sealed;
    });
    const d = await daemon({}, url);
    await waitFor("a filter of format 3 held", async () => (await metric(d.base, "ingestd_dedup_filters")) >= 1, 20_000);
    const answer = await send(d, [event("fmt1-old"), event("fmt1-new")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [1, 1], "the stored id is found, the new one accepted");
    await d.stop();
    await withClient(url, async (c) => {
      const slot = await c.query(
        `SELECT filter_v3 IS NOT NULL AS v3, octet_length(filter_v2) AS v2, octet_length(filter) AS v1 FROM events_dedup_slots WHERE part = $1`,
        [part],
      );
      assert.deepEqual(slot.rows[0], { v3: true, v2: 64 * 64, v1: 64 * 64 }, "format 3 built beside formats 1 and 2, left as they were");
      const groups = await c.query(
        `SELECT to_regclass('events_dedup_groups')::text AS v1, to_regclass('events_dedup_groups_v2')::text AS v2`,
      );
      assert.deepEqual(groups.rows[0], { v1: null, v2: null }, "the older formats' group tables, their generations gone, are dropped");
    });
  });

  test("a filter given more keys than it was sized for says so (DedupFilterFull) rather than forget one", () => {
    const filter = new DedupFilter(1_000);
    const held: string[] = [];
    assert.throws(() => {
      for (;;) {
        const key = crypto.randomUUID();
        filter.add(key);
        held.push(key);
      }
    }, DedupFilterFull);
    // 266 buckets of 4 slots: full somewhere past the thousand keys it was sized for, before its 1,064 slots.
    assert.ok(held.length >= 1_000 && held.length < 1_064, `${held.length} keys held`);
  });

  test("a filter folded to 14-bit fingerprints, then 12, then 8, still holds every key, at about 0.046%, 0.18%, then 2.9% false positives", () => {
    const held = Array.from({ length: 100_000 }, () => crypto.randomUUID());
    const filter = new DedupFilter(held.length);
    for (const k of held) filter.add(k);
    assert.equal(filter.bits, 16, "a new filter has 16-bit fingerprints");
    const others = Array.from({ length: 100_000 }, () => crypto.randomUUID());
    const fingerprints = filter.byteLength - 8;
    const fine = filter.fold();
    assert.equal(fine.bits, 14);
    assert.equal(fine.byteLength, 8 + (fingerprints * 7) / 8, "its fingerprints in seven eighths of the bytes, beside the 8-byte header");
    const mid = fine.fold();
    assert.equal(mid.bits, 12);
    assert.equal(mid.byteLength, 8 + (fingerprints * 3) / 4, "then in three quarters of them");
    const folded = mid.fold();
    assert.equal(folded.bits, 8);
    assert.equal(folded.byteLength, 8 + fingerprints / 2, "then in half of them");
    for (const [f, low, high] of [
      [fine, 0.0002, 0.0009],
      [mid, 0.0008, 0.003],
      [folded, 0.015, 0.045],
    ] as const) {
      assert.ok(f.shared instanceof SharedArrayBuffer, "folded into shared memory, as the front publishes it");
      assert.equal(held.filter((k) => !f.has(k)).length, 0, `${f.bits} bits: no false negative`);
      const rate = others.filter((k) => f.has(k)).length / others.length;
      assert.ok(rate > low && rate < high, `${f.bits} bits: false-positive rate ${rate}`);
      const again = new DedupFilter(Uint8Array.from(f.bytes()));
      assert.equal(held.filter((k) => !again.has(k)).length, 0, `${f.bits} bits: read back from its bytes, it answers alike`);
      assert.equal(others.filter((k) => again.has(k) !== f.has(k)).length, 0);
      assert.throws(() => f.add(crypto.randomUUID()), /folded filter takes no keys/);
    }
    // Each slot keeps the high bits of its own 16-bit fingerprint (little-endian as built): at 12 bits, packed
    // two to 3 bytes, what cutting each fingerprint as built to 12 bits gives.
    const built = filter.bytes();
    const wide = new Uint16Array(built.buffer, built.byteOffset + 8, fingerprints / 2);
    const twelve = new Uint8Array((fingerprints * 3) / 4);
    for (let s = 0, o = 0; s < wide.length; s += 2, o += 3) {
      const v = (wide[s] >>> 4) | ((wide[s + 1] >>> 4) << 12);
      twelve.set([v & 255, (v >>> 8) & 255, v >>> 16], o);
    }
    assert.ok(Buffer.from(mid.bytes().subarray(8)).equals(twelve), "through 14 bits, each slot's 12 high bits, in its slot");
    const highBytes = Uint8Array.from({ length: fingerprints / 2 }, (_, i) => built[8 + 2 * i + 1]);
    assert.ok(Buffer.from(folded.bytes().subarray(8)).equals(highBytes), "each slot's high byte, in its slot");
    assert.throws(() => folded.fold(), /cannot be folded again/, "8-bit fingerprints are not folded again");
  });

  test("a closed group's sealed filter (binary fuse) holds every key its cuckoo filter holds, at every width, and lets through fewer others than the cuckoo filter folded alike", () => {
    // More keys than a shard takes: the filter is built in several.
    const held = Array.from({ length: SHARD_KEYS + 100_000 }, () => crypto.randomUUID());
    const cuckoo = new DedupFilter(held.length);
    for (const k of held) cuckoo.add(k);
    cuckoo.add(held[0]); // a key twice in the cuckoo filter is held once in the sealed one
    const build = sealFilter(cuckoo);
    let step = build.next();
    let pauses = 0;
    for (; !step.done; step = build.next()) pauses++;
    assert.ok(pauses > 10, `the build pauses every few thousand keys (${pauses} pauses)`);
    let sealed = step.value;
    assert.ok(sealed instanceof FuseFilter, "built");
    assert.ok(
      Buffer.from(sealed.fold(10).bytes()).equals(Buffer.from(sealed.fold().fold().fold().bytes())),
      "folded straight to 10 bits: the bytes of three folds of two bits",
    );
    assert.throws(() => sealed!.fold(11), /cannot be folded to 11/);
    const h = new Uint32Array(4);
    const hashes = (keys: string[]) => {
      const h0s = new Uint32Array(keys.length);
      const fps = new Uint32Array(keys.length);
      keys.forEach((k, i) => {
        hashKey(k, h);
        h0s[i] = h[0];
        fps[i] = fingerprint(h);
      });
      return { h0s, fps, n: keys.length, out: new Uint32Array(keys.length) };
    };
    const mine = hashes(held);
    const others = hashes(Array.from({ length: 200_000 }, () => crypto.randomUUID()));
    let folded: DedupFilter = cuckoo;
    for (;;) {
      assert.equal(sealed.collectHits(mine.h0s, mine.fps, mine.n, mine.out), held.length, `${sealed.bits} bits: no false negative`);
      const copy = new SharedArrayBuffer(sealed.byteLength);
      new Uint8Array(copy).set(sealed.bytes());
      const again = filterFrom(copy);
      assert.ok(again instanceof FuseFilter, "read back from its bytes as a sealed filter");
      assert.equal(again.collectHits(mine.h0s, mine.fps, mine.n, mine.out), held.length);
      const sealedHits = sealed.collectHits(others.h0s, others.fps, others.n, others.out);
      assert.equal(again.collectHits(others.h0s, others.fps, others.n, others.out), sealedHits, "and answers alike for others");
      const cuckooHits = folded.collectHits(others.h0s, others.fps, others.n, others.out);
      // What the cuckoo filter as built lets through (0.011%), plus 1 in 2^bits.
      const expected = others.n * (0.00011 + 2 ** -sealed.bits);
      assert.ok(
        sealedHits < expected * 1.6 + 20,
        `${sealed.bits} bits: ${sealedHits} false positives, about ${expected.toFixed(0)} expected`,
      );
      if (sealed.bits === 6) {
        // Below the cuckoo filter's last width (8 bits), in less memory, it still lets fewer through.
        assert.ok(sealed.byteLength < folded.byteLength && sealedHits < cuckooHits, `6 bits: ${sealedHits} against ${cuckooHits} at 8`);
      }
      if (folded.bits === sealed.bits) {
        assert.ok(sealed.byteLength < folded.byteLength * 1.15, `${sealed.bits} bits: in about the cuckoo filter's memory`);
        if (sealed.bits < 16) assert.ok(sealedHits * 2 < cuckooHits, `${sealed.bits} bits: fewer than the cuckoo filter's ${cuckooHits}`);
      }
      if (sealed.bits === 4) break;
      sealed = sealed.fold();
      // The cuckoo filter has no 10-bit width: it goes from 12 to 8.
      if (folded.bits > sealed.bits && folded.foldable) folded = folded.fold();
    }
    assert.throws(() => sealed.fold(), /cannot be folded again/);
    assert.throws(() => sealFilter(folded).next(), /from a cuckoo filter as built/);
  });

  test("a batch checked against a filter at once (collectHits) finds the keys a check per key finds, at every width", () => {
    const held = Array.from({ length: 50_000 }, () => crypto.randomUUID());
    const filter = new DedupFilter(held.length);
    for (const k of held) filter.add(k);
    // Half held, half not, shuffled together: the held ones are found, and the others as often as has() lets through.
    const batch = [...held.slice(0, 2_500), ...Array.from({ length: 20_000 }, () => crypto.randomUUID())].sort();
    const h = new Uint32Array(4);
    const h0s = new Uint32Array(batch.length);
    const fps = new Uint32Array(batch.length);
    batch.forEach((k, i) => {
      hashKey(k, h);
      h0s[i] = h[0];
      fps[i] = fingerprint(h);
    });
    const out = new Uint32Array(batch.length);
    let f = filter;
    for (;;) {
      const expected = batch.flatMap((k, i) => (f.has(k) ? [i] : []));
      assert.ok(expected.length >= 2_500, `${f.bits} bits: every held key found`);
      const found = f.collectHits(h0s, fps, batch.length, out);
      assert.deepEqual([...out.subarray(0, found)], expected, `${f.bits} bits: the same keys, in batch order`);
      assert.equal(f.collectHits(h0s, fps, 100, out), expected.filter((i) => i < 100).length, "only the first n keys");
      if (f.bits === 8) break;
      f = f.fold();
    }
  });

  test("past the budget the closed groups are sealed, oldest first, one at a time, and their sealed filters taken instead of their cuckoo filters (folded in turn); below it none is; the open group never", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    const slots = dedupShape("public", eventsStream)!.slots;
    /** One known id and 30,000 random ones in each of 2 × GROUP_GENERATIONS + 1 generations: two closed groups, one open. */
    const known = Array.from({ length: 2 * GROUP_GENERATIONS + 1 }, (_, i) => `seal-${i}`);
    const roomy = new FilterDirectory("public", [eventsStream]);
    try {
      const sealedNow = (c: pg.ClientBase) =>
        c.query<{ grp: number; sealed: boolean }>(`SELECT grp, sealed_v1 IS NOT NULL AS sealed FROM events_dedup_groups_v3 ORDER BY grp`);
      const asBuilt = await withClient(url, async (c) => {
        for (let i = 0; i < known.length; i++) {
          const part = await pastGeneration(c, 100 - i);
          await remember(c, part, [known[i]]);
          await c.query(`INSERT INTO ${part} (id_key, gen) SELECT gen_random_uuid(), gen FROM ${part}, generate_series(1, 30000)`);
        }
        for (let pass = 0; pass < 3; pass++) {
          await maintainDedupState(c, "public", [eventsStream], 168, undefined, undefined, roomy);
          await roomy.refresh(c);
        }
        assert.deepEqual(
          (await sealedNow(c)).rows.map((r) => r.sealed),
          [false, false, false],
          "within the budget nothing is sealed",
        );
        return roomy.size().bytes;
      });
      // The oldest group's filter is about 45% of the bytes, an eighth of which a fold saves: 3% short folds it alone.
      const tight = new FilterDirectory("public", [eventsStream], Math.floor(asBuilt * 0.97));
      try {
        await withClient(url, async (c) => {
          await tight.refresh(c);
          assert.equal(tight.size().folded, 1, "the oldest group folded");
          await maintainDedupState(c, "public", [eventsStream], 168, undefined, undefined, tight);
          assert.deepEqual(
            (await sealedNow(c)).rows.map((r) => r.sealed),
            [true, false, false],
            "past the budget the oldest closed group is sealed; the next waits its turn, the open one is never sealed",
          );
          await tight.refresh(c);
        });
        const published = tight.list();
        const kinds = published.map((f) => [f.gens.length, FuseFilter.holds(new Uint8Array(f.words))]);
        assert.deepEqual(
          kinds.sort(),
          [
            [1, false],
            [GROUP_GENERATIONS, false],
            [GROUP_GENERATIONS, true],
          ],
          "the sealed group's sealed filter is taken, the others keep their cuckoo filters",
        );
        assert.ok(tight.size().bytes <= Math.floor(asBuilt * 0.97), "within the budget");
        const filters = new IdFilters(slots);
        filters.set(published);
        const checked = filters.check(known.map(dedupKey));
        assert.equal(checked.covered!.length, known.length, "every generation covered");
        const hit = new Set(checked.maybe);
        assert.deepEqual(
          known.filter((id) => !hit.has(dedupKey(id))),
          [],
          "every known id hits a filter",
        );
      } finally {
        tight.close();
      }
    } finally {
      roomy.close();
    }
    // A daemon whose budget folds: its ids are duplicates, whichever filter holds them.
    const d = await daemon({ DEDUP_FILTER_MB: "1" }, url);
    await waitFor("filters published", async () => (await metric(d.base, "ingestd_dedup_filters")) > 0, 20_000);
    const fresh = Array.from({ length: 50 }, (_, i) => event(`seal-fresh-${i}`));
    const answer = await send(d, [...fresh, ...known.map((id) => event(id))]);
    assert.deepEqual([answer.accepted, answer.duplicates], [50, known.length]);
    await d.stop();
  });

  test("past dedupFilterMb the oldest filters are folded, to 14 bits, then 12, then 8, then left out; their generations are probed and their ids stay duplicates", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    // Three sealed generations of 400,000 ids: 831 KiB of filter each at 17 bits per id.
    const parts = await withClient(url, async (c) => {
      const made: string[] = [];
      for (const [hours, id] of [
        [50, "bud-old"],
        [40, "bud-mid"],
        [30, "bud-new"],
      ] as const) {
        const part = await pastGeneration(c, hours);
        await remember(c, part, [id]);
        await c.query(`INSERT INTO ${part} (id_key, gen) SELECT gen_random_uuid(), gen FROM ${part}, generate_series(1, 399999)`);
        made.push(part);
      }
      await maintainDedupState(c, "public", [eventsStream], 168);
      // As an earlier release left them: a filter each, no group (it grouped ten at a time).
      await c.query(`DELETE FROM events_dedup_groups_v3`);
      return made;
    });
    const slotRows = await withClient(url, async (c) => {
      const { rows } = await c.query<{ n: number; gen: number }>(
        `SELECT octet_length(filter_v3) AS n, gen FROM events_dedup_slots WHERE part = ANY($1) ORDER BY gen`,
        [parts],
      );
      return rows;
    });
    assert.equal(slotRows.length, 3);
    const each = slotRows[0].n;
    /** "key@gen" of each id with its own generation (old, mid, new: the order the generations were made in). */
    const own = ["bud-old", "bud-mid", "bud-new"].map((id, i) => `${dedupKey(id)}@${slotRows[i].gen}`);
    const slots = dedupShape("public", eventsStream)!.slots;
    const check = async (budget: number) => {
      const directory = new FilterDirectory("public", [eventsStream], budget);
      try {
        await withClient(url, (c) => directory.refresh(c));
        const filters = new IdFilters(slots);
        filters.set(directory.list());
        return { size: directory.size(), checked: filters.check(["bud-old", "bud-mid", "bud-new"].map(dedupKey)) };
      } finally {
        directory.close();
      }
    };
    const whole = await check(3 * each);
    assert.deepEqual(
      whole.size,
      { count: 3, bytes: 3 * each, folded: 0, generations: 3, unfiltered: 0 },
      "within the budget: held as built",
    );
    // Folded to 14 bits a filter keeps seven eighths of its fingerprints' bytes (and its 8-byte header).
    const e = (each - 8) / 8;
    const oldest = await check(3 * each - e);
    assert.deepEqual(
      oldest.size,
      { count: 3, bytes: 3 * each - e, folded: 1, generations: 3, unfiltered: 0 },
      "an eighth over: the oldest folded to 14 bits",
    );
    const fourteen = await check(3 * each - 3 * e);
    assert.deepEqual(
      fourteen.size,
      { count: 3, bytes: 3 * each - 3 * e, folded: 3, generations: 3, unfiltered: 0 },
      "all three folded to 14 bits before any to 12",
    );
    // Folded to 12 bits a filter keeps three quarters of its fingerprints' bytes.
    const q = (each - 8) / 4;
    const twelve = await check(3 * each - 3 * q);
    assert.deepEqual(
      twelve.size,
      { count: 3, bytes: 3 * each - 3 * q, folded: 3, generations: 3, unfiltered: 0 },
      "all three folded to 12 bits before any to 8",
    );
    // Two more quarters: the oldest folded on to 8 bits (half of its fingerprints' bytes).
    const tight = await check(2 * each + 8);
    assert.deepEqual(
      tight.size,
      { count: 3, bytes: 2 * each + 8, folded: 3, generations: 3, unfiltered: 0 },
      "the oldest folded to 8 bits, the other two to 12",
    );
    assert.equal(tight.checked.covered!.length, 3);
    // Each old id hits its own generation's folded filter (and may hit another's: 0.18% or 2.9% false positives).
    const hits = tight.checked.maybe!.map((k, i) => `${k}@${tight.checked.gens![i]}`);
    for (const pair of own) assert.ok(hits.includes(pair), `${pair} still hits its generation's filter`);
    const small = await check(each + 8);
    assert.deepEqual(
      small.size,
      { count: 2, bytes: each + 8, folded: 2, generations: 2, unfiltered: 1 },
      "the oldest left out, the next two folded to 8 bits",
    );
    assert.equal(small.checked.covered!.length, 2, "the oldest generation is not covered: PostgreSQL probes it for every id");

    // A daemon with 1 MiB for 2.4 MiB of filters: two folded, the oldest left out; it finds the ids of all three.
    const d = await daemon({ DEDUP_FILTER_MB: "1" }, url);
    await waitFor("filters published", async () => (await metric(d.base, "ingestd_dedup_filters")) === 2, 20_000);
    assert.equal(await metric(d.base, "ingestd_dedup_filters_folded"), 2);
    assert.equal(await metric(d.base, "ingestd_dedup_unfiltered_generations"), 1);
    assert.ok((await metric(d.base, "ingestd_dedup_filter_bytes")) <= 2 ** 20);
    const fresh = Array.from({ length: 100 }, (_, i) => event(`bud-fresh-${i}`));
    const answer = await send(d, [...fresh, event("bud-old"), event("bud-mid"), event("bud-new")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [100, 3]);
    await waitFor("the warning", () => d.output.some((l) => l.includes("exceed dedupFilterMb")), 5_000);
    await d.stop();
  });

  test("past the budget, at most two filters the workers hold are folded a refresh (each fold holds the old copy beside the new until they let go of it); the rest at the next", async () => {
    const url = await freshDatabase();
    const first = await daemon({}, url);
    await first.stop();
    /** A sealed generation of 100,000 ids, its filter built, each a lone filter (as before groups). */
    const generation = async (c: pg.ClientBase, hours: number) => {
      const part = await pastGeneration(c, hours);
      await remember(c, part, [crypto.randomUUID()]);
      await c.query(`INSERT INTO ${part} (id_key, gen) SELECT gen_random_uuid(), gen FROM ${part}, generate_series(1, 99999)`);
      await maintainDedupState(c, "public", [eventsStream], 168);
      await c.query(`DELETE FROM events_dedup_groups_v3`);
    };
    await withClient(url, async (c) => {
      for (const hours of [50, 40, 30]) await generation(c, hours);
    });
    const each = await withClient(url, async (c) => {
      const { rows } = await c.query<{ n: number }>(
        `SELECT DISTINCT octet_length(filter_v3) AS n FROM events_dedup_slots WHERE filter_v3 IS NOT NULL`,
      );
      assert.equal(rows.length, 1, "the generations' filters are of one size");
      return rows[0].n;
    });
    const e = (each - 8) / 8; // an eighth of a filter's fingerprints: what a fold to 14 bits saves
    const directory = new FilterDirectory("public", [eventsStream], 4 * each - 4 * e);
    try {
      await withClient(url, (c) => directory.refresh(c));
      assert.deepEqual(directory.size(), { count: 3, bytes: 3 * each, folded: 0, generations: 3, unfiltered: 0 }, "within the budget");
      await withClient(url, (c) => generation(c, 20));
      await withClient(url, (c) => directory.refresh(c));
      assert.deepEqual(
        directory.size(),
        { count: 4, bytes: 4 * each - 2 * e, folded: 2, generations: 4, unfiltered: 0 },
        "a fourth filter: the two oldest folded to 14 bits, the others wait (over the budget by two eighths)",
      );
      await withClient(url, (c) => directory.refresh(c));
      assert.deepEqual(
        directory.size(),
        { count: 4, bytes: 4 * each - 4 * e, folded: 4, generations: 4, unfiltered: 0 },
        "the next refresh folds the other two: within the budget",
      );
    } finally {
      directory.close();
    }
  });
});

describe("the claim's fast path", () => {
  test("new ids go in by one binary COPY; a stored id, a second copy in the batch or an unfiltered generation falls back to the claim function", async () => {
    const url = await freshDatabase();
    const stream = { ...eventsStream };
    const d = dedupShape("fast", stream)!;
    const target = commitTarget("fast", stream, 0, true);
    await withClient(url, async (c) => {
      await idStateSchema(c, "fast", stream);
      // The statements the claim sends, read off the real connection.
      const sent: string[] = [];
      const query = c.query.bind(c) as (...a: unknown[]) => unknown;
      (c as unknown as { query: (...a: unknown[]) => unknown }).query = (q: unknown, ...rest: unknown[]) => {
        sent.push(typeof q === "string" ? q : String((q as { text?: string }).text ?? ""));
        return query(q, ...rest);
      };
      /** Queries the last claim sent (round trips to PostgreSQL), BEGIN included. */
      let trips = 0;
      const claim = async (keys: string[], checked: FilterCheck) => {
        sent.length = 0;
        const pre = await probeFilterHits(c, target.dedup!, checked);
        // BEGIN travels with the claim's first statement, as a worker sends it (workers/commit/group-commit.ts).
        const notStored = await claimIds(c, target.dedup!, keys, pre, "BEGIN");
        trips = sent.length;
        await c.query("COMMIT");
        const path = sent.some((q) => /\bCOPY\b/.test(q)) ? "copy" : "";
        const fell = sent.some((q) => q.includes(d.claim)) ? "claim" : "";
        const hits = sent.some((q) => q.includes("ANY($3::integer[])"))
          ? "pruned hits+"
          : sent.some((q) => q.includes("LATERAL"))
            ? "hits+"
            : "";
        return { notStored, path: hits + [path, fell].filter(Boolean).join("+") };
      };
      const none: FilterCheck = { maybe: [], gens: [], covered: [] };
      const first = Array.from({ length: 300 }, () => crypto.randomUUID());
      assert.deepEqual(await claim(first, none), { notStored: [], path: "copy" }, "300 new ids: one COPY, nothing else");
      assert.equal(trips, 2, "two round trips: BEGIN with the probe, then the savepoint, the COPY and its release");
      assert.match(sent[0], /^BEGIN; SELECT \* FROM /);
      const stored = await c.query(`SELECT count(*)::int AS n FROM ${d.ids} WHERE id_key = ANY($1::uuid[])`, [first]);
      assert.equal(stored.rows[0].n, 300);

      const again = [crypto.randomUUID(), first[7], crypto.randomUUID(), first[250]];
      assert.deepEqual(
        await claim(again, none),
        { notStored: [2, 4], path: "copy+claim" },
        "stored ids fail the COPY; the claim function finds them",
      );
      const twice = crypto.randomUUID();
      assert.deepEqual(
        await claim([twice, crypto.randomUUID(), twice], none),
        { notStored: [3], path: "copy+claim" },
        "a second copy within the batch: the first one wins",
      );
      assert.deepEqual(
        await claim([first[0], crypto.randomUUID()], { maybe: null, gens: null, covered: null }),
        {
          notStored: [1],
          path: "claim",
        },
        "no filters received yet: the claim function alone",
      );

      // A sealed generation the worker has no filter for: the probe says so, the claim function probes it.
      assert.notEqual(await rotateDedupGeneration(c, "fast", stream, 168, 0), null);
      const sealedGen = (await c.query(`SELECT gen FROM ${d.slots} WHERE sealed_at IS NOT NULL`)).rows[0].gen as number;
      assert.deepEqual(await claim([first[1], crypto.randomUUID()], none), { notStored: [1], path: "claim" });
      // Its filter checked, and hit by one key: the probe finds it stored, the claim function settles the batch.
      const hit: FilterCheck = { maybe: [first[2]], gens: [sealedGen], covered: [sealedGen] };
      assert.deepEqual(await claim([crypto.randomUUID(), first[2]], hit), { notStored: [2], path: "hits+claim" });
      // One generation hit of many covered: the hits are probed by the statement that opens that partition alone.
      const many = [sealedGen, ...Array.from({ length: 9 }, (_, i) => sealedGen + 100 + i)];
      const oneOfMany: FilterCheck = { maybe: [first[3], first[3]], gens: [sealedGen, sealedGen + 103], covered: many };
      assert.deepEqual(await claim([first[3], crypto.randomUUID()], oneOfMany), { notStored: [1], path: "pruned hits+claim" });
      const missOfMany: FilterCheck = { maybe: [crypto.randomUUID()], gens: [sealedGen], covered: many };
      assert.deepEqual(await claim([missOfMany.maybe![0]], missOfMany), { notStored: [], path: "pruned hits+copy" }, "a false positive");
      // Its filter checked and not hit: the fast path again, into the new open generation.
      const fresh = [crypto.randomUUID(), crypto.randomUUID()];
      assert.deepEqual(await claim(fresh, { maybe: [], gens: [], covered: [sealedGen] }), { notStored: [], path: "copy" });
      const where = await c.query(`SELECT DISTINCT gen FROM ${d.ids} WHERE id_key = ANY($1::uuid[])`, [fresh]);
      assert.deepEqual(where.rows, [{ gen: sealedGen + 1 }]);
    });
  });
});

describe("the claim in one trip", () => {
  test("once a claim learnt the open generation, BEGIN, the claim, the COPY and COMMIT go in one Query; a stored id, a rotation or an unfiltered generation fails it whole", async () => {
    const url = await freshDatabase();
    const stream = { ...eventsStream };
    const d = dedupShape("trip", stream)!;
    const target = commitTarget("trip", stream, 0, true);
    const sql = target.dedup!;
    await withClient(url, async (c) => {
      await idStateSchema(c, "trip", stream);
      const none: FilterCheck = { maybe: [], gens: [], covered: [] };
      const clear = { checked: none, clear: true };
      const storedOf = async (keys: string[]) =>
        (await c.query(`SELECT count(*)::int AS n FROM ${d.ids} WHERE id_key = ANY($1::uuid[])`, [keys])).rows[0].n as number;
      /** The one-trip Query, as a worker sends it (workers/commit/group-commit.ts); the error's SQLSTATE, or "committed". */
      const trip = async (keys: string[], checked = clear) => {
        const claim = oneTripClaim(sql, keys, checked);
        assert.ok(claim !== null);
        try {
          await copyIn(c, ["BEGIN", ...claim.statements, "COMMIT"].join("; "), [claim.payload]);
          return "committed";
        } catch (err) {
          await c.query("ROLLBACK");
          return (err as pg.DatabaseError).code;
        }
      };

      const first = Array.from({ length: 200 }, () => crypto.randomUUID());
      assert.equal(oneTripClaim(sql, first, clear), null, "no generation learnt yet: the long way");
      assert.equal(oneTripClaim(sql, first, { checked: { maybe: null, gens: null, covered: null }, clear: true }), null);
      assert.deepEqual(await claimIds(c, sql, first.slice(0, 100), await probeFilterHits(c, sql, none), "BEGIN"), []);
      await c.query("COMMIT");
      const open = sql.openGeneration;
      assert.ok(open !== null, "the long way's probe taught the open generation");
      assert.equal(
        oneTripClaim(sql, first, { checked: { maybe: [first[0]], gens: [open.gen - 1], covered: [open.gen - 1] }, clear: false }),
        null,
      );

      assert.equal(await trip(first.slice(100)), "committed");
      assert.equal(await storedOf(first), 200);
      const withStored = [crypto.randomUUID(), first[150], crypto.randomUUID()];
      assert.equal(await trip(withStored), "23505", "an id stored before fails the COPY on the unique index");
      assert.equal(await storedOf([withStored[0], withStored[2]]), 0, "and nothing of its Query committed");
      const twice = crypto.randomUUID();
      assert.equal(await trip([twice, crypto.randomUUID(), twice]), "23505", "so does an id twice in the batch");
      assert.equal(await storedOf([twice]), 0);

      // A rotation: the generation the worker expects is sealed, the enter function raises before any COPY.
      assert.notEqual(await rotateDedupGeneration(c, "trip", stream, 168, 0), null);
      const sealedGen = open.gen;
      const late = [crypto.randomUUID(), crypto.randomUUID()];
      assert.equal(await trip(late, { checked: { maybe: [], gens: [], covered: [sealedGen] }, clear: true }), DEDUP_NOT_ENTERED);
      assert.equal(await storedOf(late), 0);
      const inSealed = (await c.query(`SELECT count(*)::int AS n FROM ${open.part}`)).rows[0].n as number;
      assert.equal(inSealed, 200, "the sealed generation was not written");
      // The worker had no filter for the sealed generation: raised, whatever generation it expects.
      assert.deepEqual(await claimIds(c, sql, late, { checked: { maybe: [], gens: [], covered: [sealedGen] }, clear: true }, "BEGIN"), []);
      await c.query("COMMIT");
      assert.equal(sql.openGeneration?.gen, sealedGen + 1, "the long way learnt the new open generation");
      assert.equal(await trip([crypto.randomUUID()]), DEDUP_NOT_ENTERED, "a sealed generation without a filter here");
      const fresh = [crypto.randomUUID(), crypto.randomUUID()];
      assert.equal(await trip(fresh, { checked: { maybe: [], gens: [], covered: [sealedGen] }, clear: true }), "committed");
      const where = await c.query(`SELECT DISTINCT gen FROM ${d.ids} WHERE id_key = ANY($1::uuid[])`, [fresh]);
      assert.deepEqual(where.rows, [{ gen: sealedGen + 1 }]);
    });
  });
});

describe("the window", () => {
  test("an id first stored in a generation sealed more than the window ago is forgotten (its partition dropped) and accepted again", async () => {
    const url = await freshDatabase();
    const first = await daemon({ DEDUP_WINDOW_HOURS: "24" }, url);
    assert.equal((await send(first, [event("win-kept")])).accepted, 1);
    await first.stop();
    const [expired, kept] = await withClient(url, async (c) => {
      const expired = await pastGeneration(c, 30);
      const kept = await pastGeneration(c, 20);
      await remember(c, expired, ["win-expired"]);
      await remember(c, kept, ["win-inside"]);
      return [expired, kept];
    });
    const second = await daemon({ DEDUP_WINDOW_HOURS: "24" }, url);
    await waitFor("expired generation dropped", () => second.output.some((l) => l.includes("dropped past the window")), 20_000);
    const answer = await send(second, [event("win-expired"), event("win-inside"), event("win-kept")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [1, 2], "only the id older than the window is new again");
    await withClient(url, async (c) => {
      const tables = await c.query(`SELECT to_regclass($1) AS expired, to_regclass($2) AS kept`, [expired, kept]);
      assert.equal(tables.rows[0].expired, null, "the expired partition is dropped whole");
      assert.notEqual(tables.rows[0].kept, null);
    });
    await second.stop();
  });

  test("retention never drops the open generation, even with the shortest window", async () => {
    const url = await freshDatabase();
    const d = await daemon({}, url);
    await d.stop();
    await withClient(url, async (c) => {
      await pastGeneration(c, 5);
      await pastGeneration(c, 200);
      const slots = dedupShape("public", eventsStream)!.slots;
      const { dropped } = await maintainDedupState(c, "public", [eventsStream], 1);
      assert.equal(dropped.length, 2, `dropped ${dropped.join(", ")}`);
      const left = await c.query(`SELECT opened_at, sealed_at FROM ${slots} ORDER BY gen`);
      assert.equal(left.rows.filter((r) => r.opened_at !== null && r.sealed_at === null).length, 1, "the open generation stays");
      assert.ok(
        left.rows.every((r) => r.sealed_at === null || r.sealed_at.getTime() > Date.now() - HOUR),
        "every generation sealed more than the window ago is gone",
      );
      const parts = await c.query(
        `SELECT count(*)::int AS n FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events_dedup'`,
      );
      assert.equal(parts.rows[0].n, left.rowCount, "partitions and slots agree");
    });
  });

  test("a claim in flight when a rotation comes: the rotation waits for it, and a later claim finds its id in the sealed generation", async () => {
    // A schema of its own, built with the daemon's own DDL.
    const url = await freshDatabase();
    const stream = { ...eventsStream };
    const d = dedupShape("race", stream)!;
    const key = dedupKey("race-1");
    await withClient(url, async (c) => {
      await idStateSchema(c, "race", stream);
      const t1 = new pg.Client({ connectionString: url });
      const t2 = new pg.Client({ connectionString: url });
      await Promise.all([t1.connect(), t2.connect()]);
      try {
        await t1.query("BEGIN");
        const r1 = await t1.query(`SELECT n FROM ${d.claim}($1::uuid[]) AS n`, [[key]]);
        assert.equal(r1.rowCount, 0, "the first claim records the id in the open generation, uncommitted");
        // Past the rotation's lock timeout: it gives up, and the open generation stays open.
        assert.equal(await rotateDedupGeneration(c, "race", stream, 168, 0), null, "a rotation gives way to a long claim");
        const rotation = rotateDedupGeneration(c, "race", stream, 168, 0);
        await new Promise((r) => setTimeout(r, 300));
        await t2.query("BEGIN");
        const second = t2.query(`SELECT n FROM ${d.claim}($1::uuid[]) AS n`, [[key]]);
        const raced = await Promise.race([
          Promise.all([rotation, second]).then(() => "answered"),
          new Promise((r) => setTimeout(() => r("waiting"), 500)),
        ]);
        assert.equal(raced, "waiting", "the rotation waits for the claim in flight, the next claim for the rotation");
        await t1.query("COMMIT");
        assert.equal(await rotation, '"race"."events_dedup_g1"', "then the open generation is sealed");
        const r2 = await second;
        assert.deepEqual(
          r2.rows.map((r) => r.n),
          [1],
          "and the later claim, into the next generation, finds the id in the sealed one",
        );
        await t2.query("COMMIT");
      } finally {
        await Promise.all([t1.end(), t2.end()]);
      }
      const copies = await c.query(`SELECT gen, count(*)::int AS n FROM ${d.ids} WHERE id_key = $1 GROUP BY gen`, [key]);
      assert.deepEqual(copies.rows, [{ gen: 1, n: 1 }], "stored once, in the first generation");
      const slots = await c.query(
        `SELECT gen, opened_at IS NOT NULL AS opened, sealed_at IS NOT NULL AS sealed FROM ${d.slots} ORDER BY gen`,
      );
      assert.deepEqual(slots.rows, [
        { gen: 1, opened: true, sealed: true },
        { gen: 2, opened: true, sealed: false },
        { gen: 3, opened: false, sealed: false },
      ]);
    });
  });

  test("rotations every 150 ms under concurrent traffic with repeated ids: every id stored once, every copy counted", async () => {
    const d = await daemon({ WORKERS: "2" });
    let rotations = 0;
    let stop = false;
    const rotator = withClient(fx.db.url, async (c) => {
      while (!stop) {
        if ((await rotateDedupGeneration(c, "public", eventsStream, 168, 0)) !== null) rotations++;
        await new Promise((r) => setTimeout(r, 150));
      }
    });
    const ids = Array.from({ length: 3000 }, (_, i) => `w-rot-${i}`);
    let accepted = 0;
    let duplicates = 0;
    for (let round = 0; round < 6; round++) {
      // Each id twice per round, in different requests; rounds repeat ids of earlier rounds.
      const bodies = Array.from({ length: 30 }, (_, k) =>
        ids.slice(((k + round * 7) % 30) * 100, ((k + round * 7) % 30) * 100 + 100).map((id) => event(id)),
      );
      const answers = await Promise.all([...bodies, ...bodies.slice().reverse()].map((b) => send(d, b)));
      for (const a of answers) {
        accepted += a.accepted;
        duplicates += a.duplicates;
      }
    }
    stop = true;
    await rotator;
    await d.stop();
    assert.ok(rotations >= 3, `${rotations} rotations happened during the traffic`);
    assert.equal(accepted, 3000, "each id accepted once");
    assert.equal(duplicates, 6 * 60 * 100 - 3000, "every other copy a duplicate");
    assert.deepEqual(await stored("w-rot-"), { rows: 3000, distinct: 3000 });
  });
});

describe("ingestd's own tables", () => {
  test("old-shape tables are migrated at start: remembered ids stay duplicates, recent batches and dead letters stay", async () => {
    const url = await freshDatabase();
    await withClient(url, async (c) => {
      await c.query(`CREATE TABLE events_dedup (event_id text PRIMARY KEY, event_time timestamptz)`);
      await c.query(`INSERT INTO events_dedup VALUES ('mig-1', now()), ('mig-2', NULL)`);
      await c.query(`CREATE TABLE ingest_batches ("batch_id" text NOT NULL, "request_id" text NOT NULL, "stream" text NOT NULL, "status" text NOT NULL,
        "received" integer NOT NULL, "accepted" integer NOT NULL, "rejected" integer NOT NULL, "duplicates" integer NOT NULL,
        "created_at" timestamptz NOT NULL, "committed_at" timestamptz NOT NULL)`);
      await c.query(`CREATE INDEX "ingest_batches_batch_id_idx" ON ingest_batches ("batch_id", "committed_at")`);
      await c.query(`INSERT INTO ingest_batches VALUES ('b-recent', 'b-recent', 'events', 'ok', 1, 1, 0, 0, now(), now()),
        ('b-old', 'b-old', 'events', 'ok', 1, 1, 0, 0, now() - interval '60 days', now() - interval '60 days')`);
      await c.query(`CREATE TABLE ingest_dead_letters ("id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "stream" text NOT NULL, "source" text NOT NULL,
        "batch_id" text, "record_index" integer, "line" integer, "raw" text NOT NULL, "errors" jsonb NOT NULL, "received_at" timestamptz NOT NULL)`);
      await c.query(
        `INSERT INTO ingest_dead_letters ("stream", "source", "raw", "errors", "received_at") VALUES ('events', 'http', 'x', '[]', now())`,
      );
    });
    const d = await daemon({}, url);
    const answer = await send(d, [event("mig-1"), event("mig-2"), event("mig-3")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [1, 2]);
    const status = await fetch(`${d.base}/v1/batches/b-recent`);
    assert.equal(status.status, 200, "a batch committed before the migration still answers");
    const bad = await post(`${d.base}/v1/streams/events/events`, JSON.stringify([{ event_id: "mig-bad" }]));
    assert.equal(bad.status, 422, bad.text);
    await d.stop();
    await withClient(url, async (c) => {
      const kinds = await c.query(
        `SELECT relname, relkind FROM pg_class WHERE relname IN ('events_dedup', 'ingest_batches', 'ingest_dead_letters') ORDER BY 1`,
      );
      assert.deepEqual(
        kinds.rows.map((r) => r.relkind),
        ["p", "p", "p"],
        "partitioned now",
      );
      const legacy = await c.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname LIKE '%_legacy'`);
      assert.equal(legacy.rows[0].n, 0, "the old tables are gone");
      const batches = await c.query(`SELECT batch_id FROM ingest_batches WHERE batch_id LIKE 'b-%' ORDER BY 1`);
      assert.deepEqual(
        batches.rows.map((r) => r.batch_id),
        ["b-recent"],
        "rows past retention are not carried over",
      );
      const dead = await c.query(`SELECT id, raw FROM ingest_dead_letters ORDER BY id`);
      assert.equal(dead.rowCount, 2);
      assert.ok(dead.rows[1].id > dead.rows[0].id, "new dead letters number after the migrated ones");
    });
  });

  test("an id state of the time-slot shape is taken over at start: its partitions become sealed generations, their ids stay duplicates", async () => {
    const url = await freshDatabase();
    const now = Date.now();
    await withClient(url, async (c) => {
      // The shape of the release before generations: range partitions on stored_at, slots keyed by lower.
      await c.query(`CREATE TABLE events_dedup (id_key uuid NOT NULL, stored_at timestamptz NOT NULL) PARTITION BY RANGE (stored_at)`);
      await c.query(
        `CREATE TABLE events_dedup_slots (lower timestamptz PRIMARY KEY, upper timestamptz NOT NULL UNIQUE, part text NOT NULL, filter bytea)`,
      );
      const slots: Array<[string, number, number, string | null]> = [
        ["events_dedup_old", now - 40 * HOUR, now - 20 * HOUR, "ts-past"],
        ["events_dedup_cur", now - 20 * HOUR, now + HOUR, "ts-current"],
        ["events_dedup_ahead", now + HOUR, now + 20 * HOUR, null],
      ];
      for (const [name, from, to, id] of slots) {
        const [lower, upper] = [new Date(from).toISOString(), new Date(to).toISOString()];
        await c.query(`CREATE TABLE ${name} PARTITION OF events_dedup FOR VALUES FROM ('${lower}') TO ('${upper}')`);
        await c.query(`CREATE UNIQUE INDEX ON ${name} (id_key)`);
        await c.query(`INSERT INTO events_dedup_slots (lower, upper, part) VALUES ($1, $2, $3)`, [lower, upper, `"public"."${name}"`]);
        if (id !== null) await c.query(`INSERT INTO ${name} VALUES ($1, $2)`, [dedupKey(id), lower]);
      }
    });
    const d = await daemon({}, url);
    const answer = await send(d, [event("ts-past"), event("ts-current"), event("ts-new")]);
    assert.deepEqual([answer.accepted, answer.duplicates], [1, 2], "ids of both past slots are still known");
    // Once the adopted partitions have filters, their hits are probed by name (they are not under the parent).
    await waitFor(
      "the adopted generations' filters held",
      async () => (await metric(d.base, "ingestd_dedup_filtered_generations")) >= 2,
      20_000,
    );
    const filtered = await send(d, [event("ts-past"), event("ts-current"), event("ts-later")]);
    assert.deepEqual([filtered.accepted, filtered.duplicates], [1, 2], "found through their filters too");
    await d.stop();
    await withClient(url, async (c) => {
      const shape = await c.query(`SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'events_dedup'::regclass`);
      assert.equal(shape.rows[0].partstrat, "l", "the id state is partitioned by generation now");
      const adopted = await c.query(`SELECT part, sealed_at IS NOT NULL AS sealed FROM events_dedup_slots WHERE gen <= 0 ORDER BY gen`);
      assert.deepEqual(adopted.rows, [
        { part: '"public"."events_dedup_old"', sealed: true },
        { part: '"public"."events_dedup_cur"', sealed: true },
      ]);
      const ahead = await c.query(`SELECT to_regclass('events_dedup_ahead') AS t`);
      assert.equal(ahead.rows[0].t, null, "the empty slot ahead is dropped");
    });
  });

  test("ingest_batches and ingest_dead_letters: whole day partitions past retention are dropped, today's never", async () => {
    const url = await freshDatabase();
    const d = await daemon({}, url);
    await send(d, [event("ret-today")]);
    await d.stop();
    await withClient(url, async (c) => {
      const now = new Date();
      for (const t of BOOKKEEPING_TABLES) await ensureDayPartitions(c, "public", t, now, 40);
      const ago = (days: number) => new Date(now.getTime() - days * 24 * HOUR).toISOString();
      await c.query(
        `INSERT INTO ingest_batches VALUES ('r-10', 'r-10', 'events', 'ok', 1, 1, 0, 0, $1, $1), ('r-35', 'r-35', 'events', 'ok', 1, 1, 0, 0, $2, $2)`,
        [ago(10), ago(35)],
      );
      await c.query(
        `INSERT INTO ingest_dead_letters ("stream", "source", "raw", "errors", "received_at") VALUES ('events', 'http', 'd-10', '[]', $1), ('events', 'http', 'd-35', '[]', $2)`,
        [ago(10), ago(35)],
      );
      const { dropped } = await maintainBookkeeping(c, "public", { batchesRetentionDays: 7, deadLettersRetentionDays: 30 }, now);
      assert.ok(dropped.some((n) => n.startsWith("ingest_batches_d")) && dropped.some((n) => n.startsWith("ingest_dead_letters_d")));
      const batches = await c.query(`SELECT batch_id FROM ingest_batches ORDER BY 1`);
      assert.deepEqual(
        batches.rows.map((r) => r.batch_id).filter((b) => b.startsWith("r-")),
        [],
        "batches older than 7 days are gone",
      );
      assert.ok(batches.rowCount! >= 1, "today's batch row stays");
      const dead = await c.query(`SELECT raw FROM ingest_dead_letters ORDER BY 1`);
      assert.deepEqual(
        dead.rows.map((r) => r.raw),
        ["d-10"],
        "dead letters are kept 30 days",
      );
      const oldest = await c.query(
        `SELECT min(c.relname) AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = 'ingest_batches' AND c.relname <> 'ingest_batches_default'`,
      );
      const today = now.toISOString().slice(0, 10).replace(/-/g, "");
      assert.ok(
        oldest.rows[0].name >= `ingest_batches_d${ago(8).slice(0, 10).replace(/-/g, "")}`,
        `oldest batches partition ${oldest.rows[0].name}`,
      );
      assert.ok(oldest.rows[0].name <= `ingest_batches_d${today}`, "today's partition is there");
    });
  });
});

/**
 * Priority on POST /v1/ingest/batch (SPEC §3, issue 3 item 4): under contention, higher-priority requests
 * are committed first. Priority is applied by the worker's group commit, which orders its sealed batches by
 * priority, so contention is made where it matters: one worker (WORKERS=1), one request per batch
 * (BATCH_SIZE = records per request), and the worker's commit held by a lock on the dedup table while the
 * backlog builds. A sleeping machine cannot reorder anything here: the order is decided while the commit is
 * held, and measured afterwards from the transaction start times (events.ingested_at), which one worker's
 * sequential transactions make strictly increasing.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { event, get, post, startDaemon, startTestDb, waitFor, type Daemon, type TestDb } from "./harness";

let db: TestDb;
let daemon: Daemon;
const clients: pg.Client[] = [];

/** Records per request; also BATCH_SIZE, so each request is sealed as a batch of its own. */
const PER_REQUEST = 20;

before(async () => {
  db = await startTestDb();
  daemon = await startDaemon({ databaseUrl: db.url, env: { WORKERS: "1", BATCH_SIZE: String(PER_REQUEST), BATCH_TIMEOUT_MS: "5" } });
});

after(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await daemon?.stop().catch(() => undefined);
  await db?.close().catch(() => undefined);
});

async function tasksInFlight(): Promise<number> {
  const res = await get(`${daemon.base}/metrics`);
  const m = /^ingestd_tasks_in_flight(?:\{[^}]*\})? (\d+)/m.exec(res.text);
  assert.ok(m, "ingestd_tasks_in_flight is exported");
  return Number(m[1]);
}

/** Holds the worker's commit: its merge into events_dedup waits for this lock until release(). */
async function holdCommits(): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: db.url });
  clients.push(client);
  await client.connect();
  await client.query("BEGIN");
  await client.query("LOCK TABLE events_dedup IN ACCESS EXCLUSIVE MODE");
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await client.query("COMMIT");
    },
  };
}

function send(tag: string, n: number, priority: number) {
  const events = Array.from({ length: PER_REQUEST }, (_, j) => event(`${tag}-${n}-${j}`));
  return post(`${daemon.base}/v1/ingest/batch`, JSON.stringify({ events, batch_id: `${tag}-${n}`, priority }));
}

/**
 * Sends `early` requests of priority 0, waits until they are all with the worker (its first commit held),
 * then `late` requests of `latePriority`, and releases the commit. Returns, in commit order, which group each
 * request belonged to ("early" / "late").
 */
async function contend(tag: string, early: number, late: number, latePriority: number): Promise<("early" | "late")[]> {
  const hold = await holdCommits();
  try {
    const earlyAnswers = Array.from({ length: early }, (_, i) => send(`${tag}-early`, i, 0));
    // The first batch's transaction is waiting for the lock; the others queue behind it in the worker.
    await waitFor("the worker's commit to wait for the lock", async () => {
      const { rows } = await db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'ingestd-worker-%' AND wait_event_type = 'Lock'`);
      return rows[0].n === 1;
    }, 20_000);
    await waitFor(`${early} tasks in flight`, async () => (await tasksInFlight()) === early, 20_000);
    const lateAnswers = Array.from({ length: late }, (_, i) => send(`${tag}-late`, i, latePriority));
    await waitFor(`${early + late} tasks in flight`, async () => (await tasksInFlight()) === early + late, 20_000);
    // Validation and sealing of a task is synchronous in the worker once its message arrives; the worker is
    // otherwise idle (waiting on the lock), so this is ample.
    await new Promise((r) => setTimeout(r, 750));
    await hold.release();
    const answers = await Promise.all([...earlyAnswers, ...lateAnswers]);
    for (const a of answers) {
      assert.equal(a.status, 200, a.text);
      assert.equal(a.json.accepted, PER_REQUEST);
    }
  } finally {
    await hold.release();
  }
  const { rows } = await db.query(
    `SELECT split_part(event_id, '-', 2) AS grp, split_part(event_id, '-', 3)::int AS n, min(ingested_at) AS t, min(ingested_at)::text AS exact,
            count(DISTINCT ingested_at)::int AS txns
       FROM events WHERE event_id LIKE $1 || '-%' GROUP BY 1, 2 ORDER BY t`,
    [tag],
  );
  assert.equal(rows.length, early + late);
  for (const r of rows) assert.equal(r.txns, 1, "each request committed in one transaction");
  assert.equal(new Set(rows.map((r) => r.exact)).size, rows.length, "one transaction per request");
  return rows.map((r) => r.grp);
}

const before_ = (order: string[], who: string, than: string) => order.slice(0, order.lastIndexOf(than)).filter((g) => g === who).length;

describe("priority under contention (one worker, commit held while the backlog builds)", () => {
  test("control: requests of equal priority are committed in arrival order", async () => {
    const order = await contend("ctl", 30, 10, 0);
    assert.deepEqual(order, [...Array(30).fill("early"), ...Array(10).fill("late")], order.join(" "));
  });

  test("priority 10 requests sent after 30 queued priority-0 requests are committed before all but the one already committing", async () => {
    const order = await contend("pri", 30, 10, 10);
    assert.equal(before_(order, "early", "late"), 1, `commit order: ${order.join(" ")}`);
    assert.deepEqual(order, ["early", ...Array(10).fill("late"), ...Array(29).fill("early")]);
  });

  test("the batch status records the priority requests as committed before the others", async () => {
    const { rows } = await db.query(
      `SELECT batch_id, committed_at FROM ingest_batches WHERE batch_id LIKE 'pri-%' ORDER BY committed_at, batch_id`,
    );
    assert.equal(rows.length, 40);
    const lastLate = Math.max(...rows.filter((r) => r.batch_id.startsWith("pri-late")).map((r) => r.committed_at.getTime()));
    const earlyAfter = rows.filter((r) => r.batch_id.startsWith("pri-early") && r.committed_at.getTime() >= lastLate).length;
    assert.ok(earlyAfter >= 28, `${earlyAfter} of the 30 early requests committed at or after the last priority one`);
  });

  test(
    "priority still wins when more requests wait than the worker takes at once (Piscina's queue)",
    async () => {
      const order = await contend("sat", 300, 10, 10);
      assert.ok(before_(order, "early", "late") <= 1, `${before_(order, "early", "late")} priority-0 requests committed before the last priority-10 one`);
    },
  );
});

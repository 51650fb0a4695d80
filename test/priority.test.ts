/**
 * Priority on POST /v1/ingest/batch (docs/http-api.md, issue 3 item 4): under contention, higher-priority requests
 * are committed first. Priority is applied twice: bodies waiting for a worker (the dispatcher admits only
 * workerBacklogMb of bodies per worker at once) are admitted highest priority first, the front reading the
 * envelope's priority (src/front/envelope-priority.ts); inside the worker, group commit orders its sealed batches by
 * priority. Contention is made where it matters: one worker (WORKERS=1), one request per batch
 * (BATCH_SIZE = records per request), and the worker's commit held by a lock on the dedup table while the
 * backlog builds. A sleeping machine cannot reorder anything here: the order is decided while the commit is
 * held, and measured afterwards from the transaction start times (events.ingested_at), which one worker's
 * sequential transactions make strictly increasing.
 */
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import pg from "pg";
import { useDaemon } from "./fixture";
import { event, get, post, waitFor, type Daemon } from "./harness";
import { envelopePriority } from "../src/front/envelope-priority";

/** Records per request; also BATCH_SIZE, so each request is sealed as a batch of its own. */
const PER_REQUEST = 20;

/** A database, and a daemon with one worker and small, fast batches. */
const fx = useDaemon({ env: { WORKERS: "1", BATCH_SIZE: String(PER_REQUEST), BATCH_TIMEOUT_MS: "5" } });
/**
 * A daemon whose worker takes 1 MiB of bodies at once: a backlog of ~3 KB requests waits in the dispatcher.
 * Started (through fx) by the last describe() below.
 */
let narrow: Daemon | null = null;
const clients: pg.Client[] = [];
fx.teardown(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
});

async function tasksInFlight(d: Daemon): Promise<number> {
  const res = await get(`${d.base}/metrics`);
  const m = /^ingestd_tasks_in_flight(?:\{[^}]*\})? (\d+)/m.exec(res.text);
  assert.ok(m, "ingestd_tasks_in_flight is exported");
  return Number(m[1]);
}

/** Holds the worker's commit: its merge into events_dedup waits for this lock until release(). */
async function holdCommits(): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: fx.db.url });
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

function send(d: Daemon, tag: string, n: number, priority: number) {
  const events = Array.from({ length: PER_REQUEST }, (_, j) => event(`${tag}-${n}-${j}`));
  return post(`${d.base}/v1/ingest/batch`, JSON.stringify({ events, batch_id: `${tag}-${n}`, priority }));
}

/**
 * Sends `early` requests of priority 0, waits until they are all with the worker (its first commit held),
 * then `late` requests of `latePriority`, and releases the commit. Returns, in commit order, which group each
 * request belonged to ("early" / "late").
 */
async function contend(tag: string, early: number, late: number, latePriority: number, d: Daemon = fx.daemon): Promise<("early" | "late")[]> {
  const hold = await holdCommits();
  try {
    const earlyAnswers = Array.from({ length: early }, (_, i) => send(d, `${tag}-early`, i, 0));
    // The first batch's transaction is waiting for the lock; the others queue behind it in the worker.
    await waitFor("the worker's commit to wait for the lock", async () => {
      const { rows } = await fx.db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'ingestd-worker-%' AND wait_event_type = 'Lock'`);
      return rows[0].n === 1;
    }, 20_000);
    await waitFor(`${early} tasks in flight`, async () => (await tasksInFlight(d)) === early, 20_000);
    const lateAnswers = Array.from({ length: late }, (_, i) => send(d, `${tag}-late`, i, latePriority));
    await waitFor(`${early + late} tasks in flight`, async () => (await tasksInFlight(d)) === early + late, 20_000);
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
  const { rows } = await fx.db.query(
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
    const { rows } = await fx.db.query(
      `SELECT batch_id, committed_at FROM ingest_batches WHERE batch_id LIKE 'pri-%' ORDER BY committed_at, batch_id`,
    );
    assert.equal(rows.length, 40);
    const lastLate = Math.max(...rows.filter((r) => r.batch_id.startsWith("pri-late")).map((r) => r.committed_at.getTime()));
    const earlyAfter = rows.filter((r) => r.batch_id.startsWith("pri-early") && r.committed_at.getTime() >= lastLate).length;
    assert.ok(earlyAfter >= 28, `${earlyAfter} of the 30 early requests committed at or after the last priority one`);
  });

  test("priority still wins with 300 requests queued in the worker", async () => {
    const order = await contend("sat", 300, 10, 10);
    assert.ok(before_(order, "early", "late") <= 1, `${before_(order, "early", "late")} priority-0 requests committed before the last priority-10 one`);
  });
});

describe("priority when requests wait for the worker (WORKER_BACKLOG_MB=1: ~300 requests in the worker, the rest in the dispatcher)", () => {
  before(async () => {
    narrow = await fx.startDaemon({ env: { WORKERS: "1", BATCH_SIZE: String(PER_REQUEST), BATCH_TIMEOUT_MS: "5", WORKER_BACKLOG_MB: "1" } });
  });

  test("control: 500 requests then 10 of equal priority are committed in arrival order", async () => {
    const order = await contend("nctl", 500, 10, 0, narrow!);
    assert.deepEqual(order, [...Array(500).fill("early"), ...Array(10).fill("late")], order.join(" "));
  });

  test("priority 10 requests sent after 500 priority-0 requests overtake both those in the worker and those waiting for it", async () => {
    const order = await contend("nsat", 500, 10, 10, narrow!);
    // The late requests wait in the dispatcher until the held commit ends; each commit then admits the
    // highest-priority waiting request, which group commit puts ahead of the worker's sealed priority-0
    // batches. The first one or two commits run before the first late request reaches the worker.
    const early = before_(order, "early", "late");
    assert.ok(early <= 3, `${early} priority-0 requests committed before the last priority-10 one: ${order.slice(0, 20).join(" ")} …`);
  });
});

describe("envelopePriority: the front's reading of an envelope's priority", () => {
  const p = (text: string) => envelopePriority(Buffer.from(text));
  test("the envelope's own key, wherever it is", () => {
    assert.equal(p(JSON.stringify({ events: [event("a")], batch_id: "b", priority: 7 })), 7);
    assert.equal(p(JSON.stringify({ priority: 10, events: [event("a")] })), 10);
    assert.equal(p('{ "events" : [ ] , "priority" : 3 }'), 3);
    assert.equal(p('{"events":[],"priority":0}'), 0);
  });
  test("not an event's field, a string, or a nested object's key", () => {
    assert.equal(p(JSON.stringify({ events: [event("a", { priority: 9 })] })), 0);
    assert.equal(p(JSON.stringify({ events: [event("a", { priority: 9 })], priority: 4 })), 4);
    assert.equal(p(JSON.stringify({ events: [{ payload: '"priority":5' }], batch_id: "priority", priority: 2 })), 2);
    assert.equal(p(JSON.stringify({ events: [{ payload: 'x"priority' }], n: 1 })), 0);
    assert.equal(p(JSON.stringify({ events: [{ payload: 'x\\"priority' }], priority: 6 })), 6);
    assert.equal(p(JSON.stringify({ batch_id: "priority", events: [] })), 0);
  });
  test("0 for no key or a value the worker refuses", () => {
    assert.equal(p(JSON.stringify({ events: [event("a")] })), 0);
    assert.equal(p('{"events":[],"priority":11}'), 0);
    assert.equal(p('{"events":[],"priority":5.5}'), 0);
    assert.equal(p('{"events":[],"priority":"5"}'), 0);
    assert.equal(p('{"events":[],"priority":-1}'), 0);
    assert.equal(p('{"events":[],"priority":'), 0);
    assert.equal(p('{"events":["unterminated'), 0);
  });
});

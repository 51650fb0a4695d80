/**
 * Priority on POST /v1/ingest/batch (docs/http-api.md, issue 3 item 4; the guarantee is docs/architecture.md#priority): under
 * contention, higher-priority requests are committed first. Every step where work waits is covered: the
 * ring's admission (a reserve for known priority above 0), the dispatcher's hand-over to the workers (a
 * byte budget per priority level), and the worker's group commit (highest-priority batch next, open ones
 * included). Contention is made where it matters: one worker (WORKERS=1), one request per batch
 * (BATCH_SIZE = records per request), and the worker's commit held by a lock on the dedup table while the
 * backlog builds. The test waits on the daemon's own gauges until every request is where it will wait
 * (dispatcher queue or group commit, none in transit), so the order is decided before the commit is
 * released, whatever the machine's speed; it is measured afterwards from the transaction start times
 * (events.ingested_at), which one worker's sequential transactions make strictly increasing.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { before, describe, test } from "node:test";
import pg from "pg";
import { useDaemon } from "./fixture";
import { event, get, post, waitFor, type Daemon } from "./harness";
import { envelopePriority } from "../src/front/envelope-priority";

/** A daemon whose worker takes 1 MiB of bodies at once: a backlog of ~3 KB requests waits in the dispatcher. */
let narrow: Daemon | null = null;
const clients: pg.Client[] = [];
const sockets: net.Socket[] = [];

/** Records per request; also BATCH_SIZE, so each request is sealed as a batch of its own. */
const PER_REQUEST = 20;
/**
 * While commits are held, the commit watchdog (OVERLOAD_DEADLINE_MS) must not give up on the held one,
 * however long a loaded machine takes to build the backlog.
 */
const HOLDING = { OVERLOAD_DEADLINE_MS: "120000" };

/** A database, and a daemon with one worker and small, fast batches; the commit watchdog never fires. */
const fx = useDaemon({ env: { ...HOLDING, WORKERS: "1", BATCH_SIZE: String(PER_REQUEST), BATCH_TIMEOUT_MS: "5" } });
fx.teardown(async () => {
  for (const s of sockets) s.destroy();
  for (const c of clients) await c.end().catch(() => undefined);
});

/** The daemon's /metrics as a map from `name` or `name{labels}` to value. */
async function metrics(d: Daemon): Promise<Map<string, number>> {
  const res = await get(`${d.base}/metrics`);
  const out = new Map<string, number>();
  for (const m of res.text.matchAll(/^(ingestd_[a-z_]+(?:\{[^}]*\})?) (\S+)$/gm)) out.set(m[1], Number(m[2]));
  return out;
}

function gauge(m: Map<string, number>, name: string): number {
  const v = m.get(name);
  assert.ok(v !== undefined, `${name} is exported`);
  return v;
}

/** Where the daemon's tasks are: every one submitted, waiting in the dispatcher, or in group commit. */
async function placement(d: Daemon) {
  const m = await metrics(d);
  return {
    inFlight: gauge(m, "ingestd_tasks_in_flight"),
    dispatcher: gauge(m, "ingestd_tasks_waiting"),
    commitWaiting: gauge(m, 'ingestd_commit_tasks{state="waiting"}'),
    committing: gauge(m, 'ingestd_commit_tasks{state="committing"}'),
  };
}

/**
 * Resolves once `n` tasks are in flight and each of them waits where it will wait until the held commit
 * ends: in the dispatcher's queue or in the worker's group commit (none in transit, none being parsed).
 */
async function settled(d: Daemon, n: number) {
  return waitFor(
    `${n} tasks in flight, each queued in the dispatcher or in group commit`,
    async () => {
      const p = await placement(d);
      return p.inFlight === n && p.dispatcher + p.commitWaiting + p.committing === n ? p : null;
    },
    20_000,
  );
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

/** Resolves once the worker's first commit waits for the lock. */
function commitWaitsForLock() {
  return waitFor(
    "the worker's commit to wait for the lock",
    async () => {
      const { rows } = await fx.db.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'ingestd-worker-%' AND wait_event_type = 'Lock'`,
      );
      return rows[0].n === 1;
    },
    20_000,
  );
}

interface SendOptions {
  records?: number;
  /** Named outside the body, in X-Ingest-Priority. */
  header?: number;
  /** Left out of the body when undefined. */
  priority?: number;
}

function send(d: Daemon, tag: string, n: number, opts: SendOptions) {
  const events = Array.from({ length: opts.records ?? PER_REQUEST }, (_, j) => event(`${tag}-${n}-${j}`));
  const body: Record<string, unknown> = { events, batch_id: `${tag}-${n}` };
  if (opts.priority !== undefined) body.priority = opts.priority;
  const headers: Record<string, string> = opts.header === undefined ? {} : { "x-ingest-priority": String(opts.header) };
  return post(`${d.base}/v1/ingest/batch`, JSON.stringify(body), "application/json", headers);
}

/** Each request of `tag` in commit order: its group, and its transaction's start time. */
async function commitOrder(tag: string) {
  const { rows } = await fx.db.query(
    `SELECT split_part(event_id, '-', 2) AS grp, split_part(event_id, '-', 3)::int AS n, min(ingested_at) AS t, min(ingested_at)::text AS exact,
            count(DISTINCT ingested_at)::int AS txns
       FROM events WHERE event_id LIKE $1 || '-%' GROUP BY 1, 2 ORDER BY t, 1, 2`,
    [tag],
  );
  for (const r of rows) assert.equal(r.txns, 1, "each request committed in one transaction");
  return rows as Array<{ grp: "early" | "late"; n: number; exact: string }>;
}

/**
 * Sends `early` requests of priority 0 and waits until each of them is queued (the worker's first commit
 * held), then `late` requests (`lateOpts`), and releases the commit once they are queued too. Returns, in
 * commit order, which group each request belonged to, and how many tasks waited in the dispatcher before
 * and after the late ones arrived.
 */
async function contend(tag: string, early: number, late: number, lateOpts: SendOptions, d: Daemon = fx.daemon) {
  const hold = await holdCommits();
  let queuedBefore: number;
  let queuedAfter: number;
  try {
    const earlyAnswers = Array.from({ length: early }, (_, i) => send(d, `${tag}-early`, i, { priority: 0 }));
    // The first batch's transaction is waiting for the lock; the others queue behind it.
    await commitWaitsForLock();
    queuedBefore = (await settled(d, early)).dispatcher;
    const lateAnswers = Array.from({ length: late }, (_, i) => send(d, `${tag}-late`, i, lateOpts));
    queuedAfter = (await settled(d, early + late)).dispatcher;
    await hold.release();
    const answers = await Promise.all([...earlyAnswers, ...lateAnswers]);
    for (const a of answers) {
      assert.equal(a.status, 200, a.text);
      assert.equal(a.json.accepted, PER_REQUEST);
    }
  } finally {
    await hold.release();
  }
  const rows = await commitOrder(tag);
  assert.equal(rows.length, early + late);
  assert.equal(new Set(rows.map((r) => r.exact)).size, rows.length, "one transaction per request");
  return { order: rows.map((r) => r.grp), queuedBefore, queuedAfter };
}

const before_ = (order: string[], who: string, than: string) => order.slice(0, order.lastIndexOf(than)).filter((g) => g === who).length;
const fill = (n: number, g: string) => Array<string>(n).fill(g);

describe("priority under contention (one worker, commit held while the backlog builds)", () => {
  test("control: requests of equal priority are committed in arrival order", async () => {
    const { order } = await contend("ctl", 30, 10, { priority: 0 });
    assert.deepEqual(order, [...fill(30, "early"), ...fill(10, "late")], order.join(" "));
  });

  test("priority 10 requests sent after 30 queued priority-0 requests are committed before all but the one already committing", async () => {
    const { order } = await contend("pri", 30, 10, { priority: 10 });
    assert.equal(before_(order, "early", "late"), 1, `commit order: ${order.join(" ")}`);
    assert.deepEqual(order, ["early", ...fill(10, "late"), ...fill(29, "early")]);
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
    const { order } = await contend("sat", 300, 10, { priority: 10 });
    assert.deepEqual(
      order,
      ["early", ...fill(10, "late"), ...fill(299, "early")],
      `${before_(order, "early", "late")} priority-0 requests committed before the last priority-10 one`,
    );
  });

  test("a priority named only in X-Ingest-Priority counts like one in the body", async () => {
    const { order } = await contend("hdr", 30, 5, { header: 10 });
    assert.deepEqual(order, ["early", ...fill(5, "late"), ...fill(29, "early")], order.join(" "));
  });

  test("X-Ingest-Priority must be an integer from 0 to 10", async () => {
    for (const bad of ["11", "-1", "5.5", "high", "1e1"]) {
      const res = await post(
        `${fx.daemon.base}/v1/ingest/batch`,
        JSON.stringify({ events: [event(`badpri-${bad}`)] }),
        "application/json",
        { "x-ingest-priority": bad },
      );
      assert.equal(res.status, 400, `${bad}: ${res.text}`);
      assert.equal(res.json.error, "bad_priority");
    }
  });
});

describe("priority when requests wait for the worker (WORKER_BACKLOG_MB=1: ~300 requests in the worker, the rest in the dispatcher)", () => {
  before(async () => {
    narrow = await fx.startDaemon({
      env: { ...HOLDING, WORKERS: "1", BATCH_SIZE: String(PER_REQUEST), BATCH_TIMEOUT_MS: "5", WORKER_BACKLOG_MB: "1" },
    });
  });

  test("control: 500 requests then 10 of equal priority are committed in arrival order", async () => {
    const { order, queuedBefore, queuedAfter } = await contend("nctl", 500, 10, { priority: 0 }, narrow!);
    assert.ok(queuedBefore > 0, "some of the 500 waited in the dispatcher");
    assert.equal(queuedAfter, queuedBefore + 10, "the 10 of equal priority waited in the dispatcher behind them");
    assert.deepEqual(order, [...fill(500, "early"), ...fill(10, "late")], order.join(" "));
  });

  test("priority 10 requests sent after 500 priority-0 requests overtake both those in the worker and those waiting for it", async () => {
    const { order, queuedBefore, queuedAfter } = await contend("nsat", 500, 10, { priority: 10 }, narrow!);
    // Budget per priority level: the priority-0 work filling the workers' budget does not hold the priority
    // ones back, so they wait in the worker, where group commit runs them before every priority-0 batch
    // that has not started. Only the held commit was already under way.
    assert.ok(queuedBefore > 0, "some of the 500 waited in the dispatcher");
    assert.equal(queuedAfter, queuedBefore, "none of the priority-10 requests waited in the dispatcher");
    assert.equal(
      before_(order, "early", "late"),
      1,
      `${before_(order, "early", "late")} priority-0 requests committed before the last priority-10 one: ${order.slice(0, 20).join(" ")} …`,
    );
    assert.deepEqual(order, ["early", ...fill(10, "late"), ...fill(499, "early")]);
  });
});

describe("priority in the worker's group commit: a batch not yet full is not kept behind lower-priority ones", () => {
  test("priority-10 requests smaller than BATCH_SIZE run next, not after the full priority-0 batches already sealed", async () => {
    // BATCH_SIZE 40: each early request (40 records) is a full batch, sealed at once; the late ones (10
    // records each) share one open batch that its age (60 s) would not seal during the test.
    const d = await fx.startDaemon({ env: { ...HOLDING, WORKERS: "1", BATCH_SIZE: "40", BATCH_TIMEOUT_MS: "60000" } });
    const hold = await holdCommits();
    try {
      const earlyAnswers = Array.from({ length: 20 }, (_, i) => send(d, "open-early", i, { records: 40, priority: 0 }));
      await commitWaitsForLock();
      await settled(d, 20);
      const lateAnswers = Array.from({ length: 3 }, (_, i) => send(d, "open-late", i, { records: 10, priority: 10 }));
      await settled(d, 23);
      await hold.release();
      for (const a of await Promise.all([...earlyAnswers, ...lateAnswers])) assert.equal(a.status, 200, a.text);
    } finally {
      await hold.release();
    }
    const { rows } = await fx.db.query(
      `SELECT split_part(event_id, '-', 2) AS grp, min(ingested_at) AS t FROM events WHERE event_id LIKE 'open-%' GROUP BY ingested_at, 1 ORDER BY t`,
    );
    const order = rows.map((r) => r.grp);
    assert.deepEqual(order, ["early", "late", ...fill(19, "early")], `one transaction per group, in commit order: ${order.join(" ")}`);
  });
});

describe("priority at ring admission: a full ring (2 MiB, an eighth reserved for priority above 0)", () => {
  /** Opens a request whose body never finishes: its ring region is taken for the whole Content-Length. */
  function stalledUpload(d: Daemon, length: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(d.port, "127.0.0.1", () => {
        socket.write(
          `POST /v1/ingest/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n{"events":[`,
          () => resolve(),
        );
      });
      socket.on("error", reject);
      sockets.push(socket);
    });
  }

  test("priority-0 bodies hold the ring: a priority-0 request waits and is refused at its deadline, priority 10 (named in the header, or in a body that arrived whole) is stored", async () => {
    const d = await fx.startDaemon({ env: { RING_MB: "2", MAX_BODY_MB: "1", WORKERS: "1", OVERLOAD_DEADLINE_MS: "1500" } });
    const m = await metrics(d);
    const capacity = gauge(m, "ingestd_ring_capacity_bytes");
    const reserve = gauge(m, "ingestd_ring_reserve_bytes");
    assert.equal(capacity, 2 * 1024 * 1024);
    assert.equal(reserve, capacity / 8);
    // Two uploads that never finish hold all but 16 KiB of the general part of the ring.
    const stalled = Math.floor((capacity - reserve - 16 * 1024) / 2);
    await stalledUpload(d, stalled);
    await stalledUpload(d, stalled);
    await waitFor("the stalled uploads to hold the ring", async () => gauge(await metrics(d), "ingestd_ring_used_bytes") === 2 * stalled);

    /** A ~24 KB envelope: more than the general part has left, less than the reserve. */
    const body = (tag: string, priority?: number) =>
      JSON.stringify({
        events: [event(tag, { payload: { pad: "x".repeat(24 * 1024) } })],
        ...(priority === undefined ? {} : { priority }),
      });
    const sent = Date.now();
    let lowDone = false;
    const low = post(`${d.base}/v1/ingest/batch`, body("ring-p0", 0)).then((r) => ((lowDone = true), { ...r, ms: Date.now() - sent }));
    // (On a machine slow enough to see it refused first, the priority ones still face the same full ring.)
    await waitFor(
      "the priority-0 request to wait for ring space",
      async () => lowDone || gauge(await metrics(d), "ingestd_ring_waiting") === 1,
    );
    const named = await post(`${d.base}/v1/ingest/batch`, body("ring-hdr"), "application/json", { "x-ingest-priority": "10" });
    const inBody = await post(`${d.base}/v1/ingest/batch`, body("ring-body", 10));
    const lowAnswer = await low;

    // The stalled uploads hold the general part of the ring throughout (checked below), so nothing of
    // priority 0 could get in: the priority-0 request is refused once its deadline passes, and the priority
    // ones can only have been stored through the reserve. No timing is assumed.
    assert.equal(named.status, 200, named.text);
    assert.equal(inBody.status, 200, inBody.text);
    assert.equal(lowAnswer.status, 503, lowAnswer.text);
    assert.equal(lowAnswer.json.error, "overloaded");
    assert.ok(lowAnswer.ms >= 1400, `priority 0 refused after ${lowAnswer.ms} ms: not before its deadline`);
    const stored = await fx.db.query(`SELECT event_id FROM events WHERE event_id LIKE 'ring-%' ORDER BY 1`);
    assert.deepEqual(
      stored.rows.map((r) => r.event_id),
      ["ring-body", "ring-hdr"],
    );
    const after = await metrics(d);
    assert.equal(gauge(after, "ingestd_ring_used_bytes"), 2 * stalled, "the stalled uploads still hold the ring");
    assert.equal(gauge(after, "ingestd_ring_reserve_used_bytes"), 0, "the reserve is free again once they are answered");
    assert.equal(gauge(after, "ingestd_ring_waiting"), 0);
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

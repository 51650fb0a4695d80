/**
 * Batch status (docs/http-api.md, `GET /v1/batches/{id}`, `GET /v1/batch/{id}/status`, `Prefer: respond-async`) and
 * dead letters (docs/storage.md, `ingest_dead_letters`), against the real daemon and a real PostgreSQL. A request is
 * held `pending` deterministically by locking the table its commit needs, then released.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import pg from "pg";
import { useDaemon } from "./fixture";
import { event, get, openWs, post, waitFor } from "./harness";

const fx = useDaemon();
const clients: pg.Client[] = [];
fx.teardown(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
});

const STATUS_KEYS = ["accepted", "batch_id", "committed_at", "created_at", "duplicates", "received", "rejected", "status", "stream"];

async function status(id: string, base = fx.daemon.base) {
  const a = await get(`${base}/v1/batches/${encodeURIComponent(id)}`);
  const b = await get(`${base}/v1/batch/${encodeURIComponent(id)}/status`);
  assert.equal(a.status, b.status, "both routes answer alike");
  if (a.status === 200) {
    // committed_at may move only if the batch settled between the two calls.
    if (a.json.status !== "pending" && b.json.status !== "pending") assert.deepEqual(a.json, b.json, "both routes answer alike");
  }
  return b;
}

async function pollUntilSettled(id: string, timeoutMs = 15_000) {
  return waitFor(
    `batch ${id} to settle`,
    async () => {
      const res = await status(id);
      return res.status === 200 && res.json.status !== "pending" ? res.json : null;
    },
    timeoutMs,
  );
}

/** A connection of the test's own that holds a lock on `table` until release() (commit of its transaction). */
async function lockTable(table: string): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: fx.db.url });
  clients.push(client);
  await client.connect();
  await client.query("BEGIN");
  await client.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
  return {
    async release() {
      await client.query("COMMIT");
    },
  };
}

describe("the bookkeeping tables", () => {
  test("ingest_batches and ingest_dead_letters have the columns and types documented in docs/http-api.md and docs/storage.md", async () => {
    const columns = async (table: string) =>
      Object.fromEntries(
        (
          await fx.db.query(
            `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1`,
            [table],
          )
        ).rows.map((r) => [r.column_name, r.data_type]),
      );
    assert.deepEqual(await columns("ingest_dead_letters"), {
      id: "bigint",
      stream: "text",
      source: "text",
      batch_id: "text",
      record_index: "integer",
      line: "integer",
      raw: "text",
      errors: "jsonb",
      received_at: "timestamp with time zone",
      replayed_at: "timestamp with time zone",
    });
    assert.deepEqual(await columns("ingest_batches"), {
      batch_id: "text",
      request_id: "text",
      stream: "text",
      status: "text",
      received: "integer",
      accepted: "integer",
      rejected: "integer",
      duplicates: "integer",
      created_at: "timestamp with time zone",
      committed_at: "timestamp with time zone",
      message: "text",
      daemon: "text",
    });
  });
});

describe("GET /v1/batches/{id} and /v1/batch/{id}/status", () => {
  test("a committed request: every field, the same on both routes", async () => {
    const before = Date.now();
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("st-1"), event("st-2")]));
    assert.equal(res.status, 200, res.text);
    const s = await status(res.json.batch_id);
    assert.equal(s.status, 200, s.text);
    assert.deepEqual(Object.keys(s.json).sort(), STATUS_KEYS);
    assert.deepEqual(
      { ...s.json, created_at: undefined, committed_at: undefined },
      {
        batch_id: res.json.batch_id,
        stream: "events",
        status: "committed",
        received: 2,
        accepted: 2,
        rejected: 0,
        duplicates: 0,
        created_at: undefined,
        committed_at: undefined,
      },
    );
    const created = Date.parse(s.json.created_at);
    const committed = Date.parse(s.json.committed_at);
    assert.ok(created >= before - 1000 && created <= committed, `${s.json.created_at} <= ${s.json.committed_at}`);
    assert.ok(committed <= Date.now() + 1000);
  });

  test("partial (some records refused), failed (all refused), failed (unparseable body), duplicates counted", async () => {
    const partial = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("st-3"), event("")]));
    assert.equal(partial.status, 207, partial.text);
    const p = await status(partial.json.batch_id);
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.status, "partial");
    assert.deepEqual([p.json.received, p.json.accepted, p.json.rejected, p.json.duplicates], [2, 1, 1, 0]);

    const none = await post(
      `${fx.daemon.base}/v1/streams/logs/events`,
      JSON.stringify([{ service_name: "x", severity: "NOPE", message: "m" }]),
    );
    assert.equal(none.status, 422, none.text);
    const n = await status(none.json.batch_id);
    assert.equal(n.json.status, "failed");
    assert.deepEqual([n.json.stream, n.json.received, n.json.accepted, n.json.rejected], ["logs", 1, 0, 1]);

    const broken = await post(`${fx.daemon.base}/v1/streams/events/events`, "{not json");
    assert.equal(broken.status, 400, broken.text);
    assert.equal(typeof broken.json.batch_id, "string");
    const b = await waitFor("the unparseable body's status", async () => {
      const r = await status(broken.json.batch_id);
      return r.status === 200 ? r.json : null;
    });
    assert.equal(b.status, "failed");
    assert.equal(b.accepted, 0);

    const dup = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("st-1"), event("st-4")]));
    assert.equal(dup.status, 200, dup.text);
    const d = await status(dup.json.batch_id);
    assert.equal(d.json.status, "committed", "a duplicate is not an error");
    assert.deepEqual([d.json.received, d.json.accepted, d.json.rejected, d.json.duplicates], [2, 1, 0, 1]);
  });

  test("an unknown batch id → 404 on both routes", async () => {
    for (const url of [`${fx.daemon.base}/v1/batches/no-such-batch`, `${fx.daemon.base}/v1/batch/no-such-batch/status`]) {
      const res = await get(url);
      assert.equal(res.status, 404, res.text);
      assert.equal(res.json.status, "error");
    }
  });

  test("POST /v1/ingest/batch with the producer's batch_id: its status is found under that id and under the request id", async () => {
    const res = await post(
      `${fx.daemon.base}/v1/ingest/batch`,
      JSON.stringify({ events: [event("pb-1"), event("pb-2", { payload: 1 })], batch_id: "producer-batch-7", priority: 3 }),
    );
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.batch_id, "producer-batch-7");
    const s = await status("producer-batch-7");
    assert.equal(s.status, 200, s.text);
    assert.deepEqual([s.json.batch_id, s.json.status, s.json.accepted, s.json.rejected], ["producer-batch-7", "partial", 1, 1]);
    const dead = await fx.db.query(`SELECT batch_id, record_index FROM ingest_dead_letters WHERE batch_id = 'producer-batch-7'`);
    assert.deepEqual(dead.rows, [{ batch_id: "producer-batch-7", record_index: 1 }], "dead letters carry the producer's batch id");
  });
});

describe("Prefer: respond-async", () => {
  test("202 at once; the status is pending while the commit is held, then committed", async () => {
    const lock = await lockTable("events_dedup");
    let released = false;
    try {
      const res = await post(
        `${fx.daemon.base}/v1/streams/events/events`,
        JSON.stringify([event("as-1"), event("as-2")]),
        "application/json",
        { prefer: "respond-async" },
      );
      assert.equal(res.status, 202, res.text);
      assert.deepEqual(Object.keys(res.json).sort(), ["batch_id", "status", "stream"]);
      assert.equal(res.json.status, "accepted");
      const id = res.json.batch_id;
      for (let i = 0; i < 3; i++) {
        const s = await status(id);
        assert.equal(s.status, 200, s.text);
        assert.equal(s.json.status, "pending");
        assert.equal(s.json.batch_id, id);
        assert.equal(s.json.stream, "events");
        assert.equal(s.json.committed_at, null);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(
        Number((await fx.db.query(`SELECT count(*) AS n FROM events WHERE event_id LIKE 'as-%'`)).rows[0].n),
        0,
        "nothing committed yet",
      );
      const held = await fx.db.query(`SELECT batch_id, status, stream FROM ingest_batches WHERE request_id = $1`, [id]);
      assert.deepEqual(held.rows, [{ batch_id: id, status: "pending", stream: "events" }], "pending is held in PostgreSQL");
      await lock.release();
      released = true;
      const settled = await pollUntilSettled(id);
      assert.equal(settled.status, "committed");
      assert.equal(settled.accepted, 2);
      assert.equal(Number((await fx.db.query(`SELECT count(*) AS n FROM events WHERE event_id LIKE 'as-%'`)).rows[0].n), 2);
    } finally {
      if (!released) await lock.release();
    }
  });

  test("TPC-H lines through /ingest/batch: 202, pending, then partial with the line counts; the orphan is a dead letter", async () => {
    const lock = await lockTable("lineitem");
    let released = false;
    try {
      const body = [
        "O|70001|1|O|10.00|1996-01-02|5-LOW|Clerk#1|0|async",
        "L|70001|1|1|1|1.00|1.00|0.00|0.00|N|O|1996-01-03|1996-01-03|1996-01-03|NONE|AIR|ok",
        "L|79999|1|1|1|1.00|1.00|0.00|0.00|N|O|1996-01-03|1996-01-03|1996-01-03|NONE|AIR|orphan",
      ].join("\n");
      const res = await post(`${fx.daemon.base}/ingest/batch`, body, "text/plain", { prefer: "respond-async" });
      assert.equal(res.status, 202, res.text);
      const id = res.json.batch_id;
      assert.equal((await status(id)).json.status, "pending");
      await lock.release();
      released = true;
      const settled = await pollUntilSettled(id);
      assert.deepEqual([settled.status, settled.received, settled.accepted, settled.rejected], ["partial", 3, 2, 1]);
      const dead = await fx.db.query(`SELECT stream, line, raw, errors FROM ingest_dead_letters WHERE batch_id = $1`, [id]);
      assert.equal(dead.rows.length, 1);
      assert.equal(dead.rows[0].stream, "lineitem");
      assert.equal(dead.rows[0].line, 3);
      assert.match(dead.rows[0].raw, /orphan$/);
      assert.match(dead.rows[0].errors[0].message, /rejected by the database: .*foreign key/);
    } finally {
      if (!released) await lock.release();
    }
  });

  test("POST /v1/ingest/batch with the producer's batch_id and respond-async: that id answers pending while in flight", async () => {
    const lock = await lockTable("events_dedup");
    try {
      const res = await post(
        `${fx.daemon.base}/v1/ingest/batch`,
        JSON.stringify({ events: [event("pa-1")], batch_id: "producer-async-1" }),
        "application/json",
        { prefer: "respond-async" },
      );
      assert.equal(res.status, 202, res.text);
      const byRequestId = await status(res.json.batch_id);
      assert.equal(byRequestId.json.status, "pending", "the 202's id is pending");
      const byProducerId = await status("producer-async-1");
      assert.equal(byProducerId.status, 200, `the producer's id: ${byProducerId.status} ${byProducerId.text}`);
      assert.equal(byProducerId.json.status, "pending");
    } finally {
      await lock.release();
      await waitFor("producer-async-1 to commit", async () => (await status("producer-async-1")).status === 200);
    }
  });

  test("a 202'd request whose commit fails: failed with the reason, held in ingest_batches for every daemon", async () => {
    const lock = await lockTable("events_dedup");
    let id = "";
    try {
      const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("af-1")]), "application/json", {
        prefer: "respond-async",
      });
      assert.equal(res.status, 202, res.text);
      id = res.json.batch_id;
      // The commit waits on the lock; cutting the workers' connections fails it (the daemon's own pool survives).
      await waitFor("the commit to wait on the lock", async () => {
        const { rows } = await fx.db.query(
          `SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE application_name LIKE 'ingestd-worker-%' AND wait_event_type = 'Lock'`,
        );
        return rows.length > 0;
      });
    } finally {
      await lock.release();
    }
    const settled = await pollUntilSettled(id);
    assert.equal(settled.status, "failed");
    assert.equal(settled.committed_at, null);
    assert.equal(typeof settled.message, "string");
    const { rows } = await fx.db.query(`SELECT status, message FROM ingest_batches WHERE request_id = $1 ORDER BY status`, [id]);
    assert.deepEqual(
      rows.map((r) => r.status),
      ["failed", "pending"],
      "the failure is written by the daemon that took the request",
    );
    assert.equal(rows[0].message, settled.message);
    assert.equal(Number((await fx.db.query(`SELECT count(*) AS n FROM events WHERE event_id = 'af-1'`)).rows[0].n), 0);
  });

  test("a 202'd request whose daemon is killed before its commit: failed on the other daemon, nothing stored", async () => {
    const lock = await lockTable("events_dedup");
    try {
      const doomed = await fx.startDaemon();
      const res = await post(`${doomed.base}/v1/streams/events/events`, JSON.stringify([event("orphan-1")]), "application/json", {
        prefer: "respond-async",
      });
      assert.equal(res.status, 202, res.text);
      const id = res.json.batch_id;
      assert.equal((await status(id)).json.status, "pending", "the other daemon reports it pending while its daemon runs");
      await doomed.kill("SIGKILL");
      const settled = await pollUntilSettled(id, 20_000);
      assert.equal(settled.status, "failed");
      assert.equal(settled.committed_at, null);
      assert.match(settled.message, /stopped before committing it/);
    } finally {
      await lock.release();
    }
    // Its commit was waiting on the lock when the daemon died: nothing of it may land afterwards.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(Number((await fx.db.query(`SELECT count(*) AS n FROM events WHERE event_id = 'orphan-1'`)).rows[0].n), 0);
  });

  test("many async requests in a row: each one's status ends committed with its own counts", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const records = Array.from({ length: i + 1 }, (_, j) => event(`many-${i}-${j}`));
      const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(records), "application/json", {
        prefer: "respond-async",
      });
      assert.equal(res.status, 202, res.text);
      ids.push(res.json.batch_id);
    }
    for (let i = 0; i < ids.length; i++) {
      const s = await pollUntilSettled(ids[i]);
      assert.deepEqual([s.status, s.received, s.accepted], ["committed", i + 1, i + 1]);
    }
  });
});

describe("dead letters from every path", () => {
  test("a WebSocket frame's refused records: source ws, stream of the connection, raw record and errors", async () => {
    const ws = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=logs`);
    try {
      ws.send(
        JSON.stringify([
          { service_name: "ws-dl", severity: "INFO", message: "ok" },
          { service_name: "ws-dl", severity: "LOUD", message: "bad" },
        ]),
      );
      const [ack] = await ws.waitForAcks(1);
      assert.deepEqual([ack.accepted, ack.rejected], [1, 1]);
      const dead = await waitFor("the ws dead letter", async () => {
        const r = await fx.db.query(`SELECT stream, source, record_index, raw, errors FROM ingest_dead_letters WHERE raw LIKE '%"LOUD"%'`);
        return r.rows.length > 0 ? r.rows : null;
      });
      assert.equal(dead.length, 1);
      assert.equal(dead[0].stream, "logs");
      assert.equal(dead[0].source, "ws");
      assert.equal(dead[0].record_index, 1);
      assert.deepEqual(JSON.parse(dead[0].raw), { service_name: "ws-dl", severity: "LOUD", message: "bad" });
      assert.equal(dead[0].errors[0].path, "severity");
    } finally {
      ws.socket.close();
    }
  });

  test("an unparseable body is one dead letter holding the body as received", async () => {
    const body = '[{"event_id": "x", truncated';
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, body);
    assert.equal(res.status, 400, res.text);
    const dead = await waitFor("the body's dead letter", async () => {
      const r = await fx.db.query(`SELECT stream, record_index, line, raw, errors FROM ingest_dead_letters WHERE batch_id = $1`, [
        res.json.batch_id,
      ]);
      return r.rows.length > 0 ? r.rows : null;
    });
    assert.equal(dead.length, 1);
    assert.deepEqual([dead[0].stream, dead[0].record_index, dead[0].line, dead[0].raw], ["events", null, null, body]);
    assert.match(dead[0].errors[0].message, /malformed JSON/);
  });

  test("the count of dead letters of a request equals its `rejected`", async () => {
    const records = Array.from({ length: 50 }, (_, i) => (i % 5 === 0 ? event(`cnt-${i}`, { event_type: "" }) : event(`cnt-${i}`)));
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(records));
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.rejected, 10);
    const dead = await fx.db.query(`SELECT record_index FROM ingest_dead_letters WHERE batch_id = $1 ORDER BY record_index`, [
      res.json.batch_id,
    ]);
    assert.deepEqual(
      dead.rows.map((r) => r.record_index),
      [0, 5, 10, 15, 20, 25, 30, 35, 40, 45],
    );
  });
});

describe("batch status survives a restart of the daemon", () => {
  test("stop the daemon, start a new one on the same database: the same answers for every batch", async () => {
    const ids: string[] = [];
    const a = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("rs-1")]));
    const b = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("rs-2"), event("rs-3", { payload: null })]));
    const c = await post(
      `${fx.daemon.base}/ingest/batch`,
      "O|71001|1|O|10.00|1996-01-02|5-LOW|Clerk#1|0|restart\nL|71999|1|1|1|1.00|1.00|0.00|0.00|N|O|1996-01-03|1996-01-03|1996-01-03|NONE|AIR|x",
      "text/plain",
    );
    const d = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify({ events: [event("rs-4")], batch_id: "restart-producer-id" }));
    ids.push(a.json.batch_id, b.json.batch_id, "restart-producer-id");
    assert.deepEqual([a.status, b.status, c.status, d.status], [200, 207, 207, 200]);
    const tpchId = (await fx.db.query(`SELECT batch_id FROM ingest_batches WHERE stream = 'tpch' ORDER BY committed_at DESC LIMIT 1`))
      .rows[0].batch_id;
    ids.push(tpchId);
    const beforeViews = [];
    for (const id of ids) {
      const s = await status(id);
      assert.equal(s.status, 200, s.text);
      beforeViews.push(s.json);
    }
    assert.deepEqual(
      beforeViews.map((v) => v.status),
      ["committed", "partial", "committed", "partial"],
    );

    const { code } = await fx.daemon.stop();
    assert.equal(code, 0);
    await fx.restart();
    for (let i = 0; i < ids.length; i++) {
      const s = await status(ids[i]);
      assert.equal(s.status, 200, s.text);
      assert.deepEqual(s.json, beforeViews[i], `batch ${ids[i]} after the restart`);
    }
    assert.equal((await get(`${fx.daemon.base}/v1/batches/never-seen`)).status, 404);
  });
});

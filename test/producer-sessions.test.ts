/**
 * Producer sessions over WebSocket against the real daemon and PostgreSQL (docs/websocket-protocol.md#producer-sessions):
 * the hello's committed_seq, numbering on from it, one row per producer, fencing of an older session on one
 * daemon and across two daemons sharing the database, and nothing a fenced session sends stored after the
 * new session read committed_seq.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import pg from "pg";
import { Producer, ProducerError } from "../src/client";
import { forgetIdleProducers } from "../src/storage/producers";
import { useTestDb } from "./fixture";
import { openWs, type Daemon, type WsClient } from "./harness";

/** A database and two daemons on it (window 8), for fencing across daemons. */
const fx = useTestDb();
let one: Daemon;
let two: Daemon;
const clients: WsClient[] = [];

/** NDJSON frame of `n` log records, messages `${tag}-${seq}-${i}`. */
function frame(tag: string, seq: number, n: number): string {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) lines.push(JSON.stringify({ service_name: "svc", severity: "INFO", message: `${tag}-${seq}-${i}` }));
  return lines.join("\n");
}

async function session(d: Daemon, producer: string, stream = "logs"): Promise<WsClient> {
  const c = await openWs(`${d.wsBase}/v1/ws?stream=${stream}&producer=${encodeURIComponent(producer)}`);
  clients.push(c);
  return c;
}

async function rows(tag: string): Promise<{ total: number; distinct: number; maxSeq: number }> {
  const res = await fx.db.query(
    `SELECT count(*)::int AS total, count(DISTINCT message)::int AS distinct, coalesce(max(split_part(message, '-', 2)::int), 0) AS "maxSeq"
       FROM logs WHERE message LIKE $1 || '-%'`,
    [tag],
  );
  return res.rows[0];
}

fx.setup(async () => {
  [one, two] = await Promise.all([fx.startDaemon({ env: { WS_WINDOW: "8" } }), fx.startDaemon({ env: { WS_WINDOW: "8" } })]);
});
fx.teardown(() => {
  for (const c of clients) c.socket.terminate();
});

describe("producer sessions", () => {
  test("hello carries producer and committed_seq; frames number on from it; one row per producer", async () => {
    const a = await session(one, "p-basic");
    assert.equal(a.hello.producer, "p-basic");
    assert.equal(a.hello.committed_seq, 0);
    for (let s = 1; s <= 3; s++) a.send(frame("basic", s, 5));
    const acks = await a.waitForAcks(3);
    assert.deepEqual(
      acks.map((k) => [k.seq, k.accepted]),
      [
        [1, 5],
        [2, 5],
        [3, 5],
      ],
    );
    a.socket.close();
    await a.closed;
    const b = await session(two, "p-basic");
    assert.equal(b.hello.committed_seq, 3);
    b.send(frame("basic", 4, 5));
    const [ack] = await b.waitForAcks(1);
    assert.equal(ack.seq, 4);
    assert.deepEqual(await rows("basic"), { total: 20, distinct: 20, maxSeq: 4 });
    const state = await fx.db.query(
      "SELECT count(*)::int AS n, max(committed_seq)::int AS seq FROM ingest_producers WHERE producer = 'p-basic'",
    );
    assert.deepEqual(state.rows[0], { n: 1, seq: 4 });
  });

  test("a frame with nothing to store still advances the session: unparseable, all rejected, empty", async () => {
    const a = await session(one, "p-odd");
    a.send("{not json");
    a.send(JSON.stringify({ service_name: "svc", severity: "LOUD", message: "x" }));
    a.send("");
    a.send(frame("odd", 4, 2));
    const acks = await a.waitForAcks(4);
    assert.deepEqual(
      acks.map((k) => [k.seq, k.accepted, k.rejected]),
      [
        [1, 0, 1],
        [2, 0, 1],
        [3, 0, 1],
        [4, 2, 0],
      ],
    );
    assert.match(acks[1].errors[0].path, /severity/);
    a.socket.close();
    const b = await session(one, "p-odd");
    assert.equal(b.hello.committed_seq, 4);
  });

  test("a bad producer id is refused with 400 naming the field; tpch needs a session", async () => {
    for (const bad of ["", "x".repeat(129), "a b", "é"]) {
      await assert.rejects(openWs(`${one.wsBase}/v1/ws?stream=logs&producer=${encodeURIComponent(bad)}`), (err: any) => {
        assert.equal(err.status, 400);
        assert.match(err.body, /producer/);
        return true;
      });
    }
    await assert.rejects(openWs(`${one.wsBase}/v1/ws?stream=tpch`), (err: any) => err.status === 400 && /producer session/.test(err.body));
    const ok = await session(one, "A.b_c:d@e-1", "tpch");
    assert.equal(ok.hello.committed_seq, 0);
  });

  test("on one daemon a new session closes the old one with 4409 before its hello", async () => {
    const a = await session(one, "p-local");
    a.send(frame("local", 1, 3));
    await a.waitForAcks(1);
    const b = await session(one, "p-local");
    const closed = await Promise.race([a.closed, new Promise((r) => setTimeout(() => r(null), 1000))]);
    assert.deepEqual(closed, { code: 4409, reason: "superseded" });
    assert.equal(b.hello.committed_seq, 1);
  });

  for (const where of ["on the same daemon", "across two daemons"] as const) {
    test(`${where}: the older session is fenced (4409) while sending, and nothing it sent after the new hello is stored`, async (t) => {
      const tag = where === "on the same daemon" ? "race1" : "race2";
      const a = await session(one, `p-${tag}`);
      let seq = 0;
      let stop = false;
      // Keep A's window full while B takes over.
      const pump = setInterval(() => {
        if (stop || a.socket.readyState !== a.socket.OPEN) return;
        while (seq - a.acks.length < 8) a.send(frame(tag, ++seq, 20));
      }, 2);
      // A failed assertion must not leave the pump running: the file's process would never exit.
      t.after(() => clearInterval(pump));
      let closedEarly = "";
      void a.closed.then((c) => (closedEarly = `${c.code} ${c.reason}`));
      for (const started = Date.now(); a.acks.length < 20; await new Promise((r) => setTimeout(r, 20))) {
        if (closedEarly !== "" || Date.now() - started > 10_000)
          assert.fail(`A: ${a.acks.length} acks of ${seq} frames sent${closedEarly ? `, closed ${closedEarly}` : ""}`);
      }
      const b = await session(where === "on the same daemon" ? one : two, `p-${tag}`);
      const read = b.hello.committed_seq as number;
      const closedA = await Promise.race([a.closed, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
      stop = true;
      clearInterval(pump);
      assert.deepEqual(closedA, { code: 4409, reason: "superseded" });
      // Every frame A had acked is within what B read; nothing above it was stored.
      assert.ok(a.acks.length <= read, `A acked ${a.acks.length}, B read ${read}`);
      assert.ok(seq > read, "A sent nothing after B's hello: the race was not exercised");
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(await rows(tag), { total: read * 20, distinct: read * 20, maxSeq: read });
      // B goes on from there.
      b.send(frame(tag, read + 1, 20));
      await b.waitForAcks(1);
      assert.deepEqual(await rows(tag), { total: (read + 1) * 20, distinct: (read + 1) * 20, maxSeq: read + 1 });
    });
  }

  test("through the client: a second producer with the same id supersedes the first, whose waiting records reject", async () => {
    const first = new Producer({ url: one.wsBase, stream: "logs", producer: "p-client", maxDelayMs: 200 });
    assert.equal((await first.send({ service_name: "svc", severity: "INFO", message: "client-1-0" })).status, "accepted");
    const second = new Producer({ url: two.wsBase, stream: "logs", producer: "p-client", maxDelayMs: 200 });
    assert.equal((await second.send({ service_name: "svc", severity: "INFO", message: "client-2-0" })).status, "accepted");
    await assert.rejects(
      first.send({ service_name: "svc", severity: "INFO", message: "client-1-1" }),
      (err: any) => err instanceof ProducerError && err.code === 4409,
    );
    await second.close();
    await first.destroy();
    assert.deepEqual(await rows("client"), { total: 2, distinct: 2, maxSeq: 2 });
  });

  test("a fenced session that keeps sending on another daemon stores nothing", async () => {
    const a = await session(one, "p-late");
    a.send(frame("late", 1, 2));
    await a.waitForAcks(1);
    const b = await session(two, "p-late");
    assert.equal(b.hello.committed_seq, 1);
    // A may still be open for a moment (the notification is a courtesy); whatever it sends is refused.
    if (a.socket.readyState === a.socket.OPEN) a.send(frame("late", 2, 2));
    const closed = await a.closed;
    assert.equal(closed.code, 4409);
    assert.deepEqual(await rows("late"), { total: 2, distinct: 2, maxSeq: 1 });
  });

  test("idle-producer retention deletes only rows idle past the limit, in bounded steps; a forgotten producer starts at 0", async () => {
    for (let i = 0; i < 5; i++) await session(one, `p-idle-${i}`);
    await fx.db.query(
      "UPDATE ingest_producers SET updated_at = now() - interval '40 days', committed_seq = 9 WHERE producer LIKE 'p-idle-%'",
    );
    const pool = new pg.Pool({ connectionString: fx.db.url, max: 1 });
    try {
      assert.equal(await forgetIdleProducers(pool, "public", 30, 3), 3);
      assert.equal(await forgetIdleProducers(pool, "public", 30, 3), 2);
      assert.equal(await forgetIdleProducers(pool, "public", 30, 3), 0);
    } finally {
      await pool.end();
    }
    const left = await fx.db.query("SELECT count(*)::int AS n FROM ingest_producers WHERE producer LIKE 'p-idle-%'");
    assert.equal(left.rows[0].n, 0);
    assert.ok((await fx.db.query("SELECT count(*)::int AS n FROM ingest_producers WHERE producer = 'p-basic'")).rows[0].n === 1);
    const back = await session(one, "p-idle-1");
    assert.equal(back.hello.committed_seq, 0);
  });
});

/**
 * Idempotent ingestion (docs/storage.md, issue 4): an event whose event_id is already stored is not stored again and
 * is counted in `duplicates` — within one request, across concurrent batches of different workers and
 * connections, across daemons, and later. Also: two daemons started at once on one empty database.
 * Real daemons, real PostgreSQL; the rows that landed are counted.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import pg from "pg";
import { dedupKey } from "../src/shared/dedup-key";
import { useDaemon } from "./fixture";
import { ROOT, event, openWs, post, type Daemon } from "./harness";

const fx = useDaemon();
const tmpFiles: string[] = [];
after(() => {
  for (const f of tmpFiles) fs.rmSync(f, { force: true });
});

let dbCounter = 0;
/** A new empty database in the test's cluster. */
async function createDatabase(): Promise<{ url: string; query: (sql: string, params?: unknown[]) => Promise<pg.QueryResult> }> {
  const name = `dedup_extra_${process.pid}_${++dbCounter}`;
  const admin = new pg.Client({ connectionString: fx.db.server.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = fx.db.server.url.replace(/\/postgres$/, `/${name}`);
  return {
    url,
    async query(sql, params) {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        return await c.query(sql, params as any[]);
      } finally {
        await c.end();
      }
    },
  };
}

/** Sends every frame over one WebSocket, keeping within the server's window; resolves with the acks. */
async function sendOverWs(url: string, frames: string[]): Promise<any[]> {
  const ws = await openWs(url);
  try {
    const window: number = ws.hello.window;
    let sent = 0;
    while (sent < frames.length) {
      if (sent - ws.acks.length >= window) {
        await ws.waitForAcks(sent - window + 1, 60_000);
        continue;
      }
      ws.send(frames[sent++]);
    }
    const acks = await ws.waitForAcks(frames.length, 60_000);
    assert.deepEqual(
      acks.map((a) => a.seq),
      frames.map((_, i) => i + 1),
      "acks in seq order",
    );
    return acks;
  } finally {
    ws.socket.close();
  }
}

function chunk<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

const sum = (xs: any[], key: string) => xs.reduce((n, x) => n + x[key], 0);

async function countEvents(
  prefix: string,
  q: (sql: string, params?: unknown[]) => Promise<pg.QueryResult> = fx.db.query,
): Promise<{ rows: number; distinct: number }> {
  const { rows } = await q(
    `SELECT count(*)::int AS rows, count(DISTINCT event_id)::int AS distinct FROM events WHERE event_id LIKE $1 || '%'`,
    [prefix],
  );
  return rows[0];
}

describe("the same 10,000 event ids sent three times", () => {
  test("twice concurrently over two WebSocket connections, then over HTTP: exactly 10,000 rows; accepted and duplicates add up", async () => {
    const ids = Array.from({ length: 10_000 }, (_, i) => `dd-${String(i).padStart(5, "0")}`);
    const records = ids.map((id, i) => event(id, { payload: { i } }));
    // Different frame sizes, so each connection's batches overlap the other's in shifting ways.
    const framesA = chunk(records, 250).map((c) => JSON.stringify(c));
    const framesB = chunk(records, 200).map((c) => c.map((r) => JSON.stringify(r)).join("\n"));
    const [acksA, acksB] = await Promise.all([
      sendOverWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, framesA),
      sendOverWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, framesB),
    ]);
    const ws = [...acksA, ...acksB];
    assert.equal(sum(ws, "rejected"), 0);
    assert.equal(sum(ws, "accepted"), 10_000, "every id accepted exactly once over the two connections");
    assert.equal(sum(ws, "duplicates"), 10_000, "and the other copy counted as a duplicate");
    acksA.forEach((a, i) => assert.equal(a.accepted + a.duplicates, JSON.parse(framesA[i]).length, `frame A${i + 1}`));
    acksB.forEach((a, i) => assert.equal(a.accepted + a.duplicates, framesB[i].split("\n").length, `frame B${i + 1}`));

    const http = await Promise.all(chunk(records, 1000).map((c) => post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(c))));
    for (const res of http) assert.equal(res.status, 200, res.text);
    const answers = http.map((r) => r.json);
    assert.equal(sum(answers, "accepted"), 0);
    assert.equal(sum(answers, "duplicates"), 10_000);

    assert.deepEqual(await countEvents("dd-"), { rows: 10_000, distinct: 10_000 });
    // The id state holds each id's key once (src/shared/dedup-key.ts).
    const dedup = await fx.db.query(`SELECT count(*)::int AS n FROM events_dedup WHERE id_key = ANY($1::uuid[])`, [ids.map(dedupKey)]);
    assert.equal(dedup.rows[0].n, 10_000);
    // The batch outcomes agree with the answers.
    const batches = await fx.db.query(
      `SELECT sum(accepted)::int AS accepted, sum(duplicates)::int AS duplicates FROM ingest_batches WHERE batch_id = ANY($1)`,
      [answers.map((a) => a.batch_id)],
    );
    assert.deepEqual(batches.rows[0], { accepted: 0, duplicates: 10_000 });
  });
});

/** A labelled sample of GET /metrics (0 when absent). */
async function sample(base: string, series: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

describe("a group commit in one round trip", () => {
  test("batches of new ids commit in one trip, a batch holding a stored id the long way; answers, rows and batch rows agree", async () => {
    const oneTrip = 'ingestd_group_commits_total{path="one_trip"}';
    const long = 'ingestd_group_commits_total{path="long"}';
    const before = { oneTrip: await sample(fx.daemon.base, oneTrip), long: await sample(fx.daemon.base, long) };
    const answers = [];
    // One request at a time: each is its own batch, and each worker learns the open generation on its first.
    for (let r = 0; r < 8; r++) {
      const res = await post(
        `${fx.daemon.base}/v1/streams/events/events`,
        JSON.stringify(Array.from({ length: 50 }, (_, i) => event(`trip-${r}-${i}`))),
      );
      assert.equal(res.status, 200, res.text);
      answers.push(res.json);
    }
    assert.deepEqual(
      answers.map((a) => [a.accepted, a.duplicates]),
      answers.map(() => [50, 0]),
    );
    const mid = { oneTrip: await sample(fx.daemon.base, oneTrip), long: await sample(fx.daemon.base, long) };
    assert.ok(mid.oneTrip - before.oneTrip >= 6, `one-trip commits ${before.oneTrip} -> ${mid.oneTrip}`);
    const res = await post(
      `${fx.daemon.base}/v1/streams/events/events`,
      JSON.stringify([event("trip-new-a"), event("trip-3-7"), event("trip-new-b")]),
    );
    assert.equal(res.status, 200, res.text);
    assert.deepEqual([res.json.accepted, res.json.duplicates], [2, 1]);
    assert.ok((await sample(fx.daemon.base, long)) > mid.long, "the stored id took the batch the long way");
    assert.deepEqual(await countEvents("trip-"), { rows: 402, distinct: 402 });
    const batches = await fx.db.query(
      `SELECT sum(accepted)::int AS accepted, sum(duplicates)::int AS duplicates FROM ingest_batches WHERE batch_id = ANY($1)`,
      [[...answers, res.json].map((a) => a.batch_id)],
    );
    assert.deepEqual(batches.rows[0], { accepted: 402, duplicates: 1 });
  });
});

describe("duplicates in other shapes", () => {
  test("within one request: the first copy is stored, the later ones are duplicates", async () => {
    const res = await post(
      `${fx.daemon.base}/v1/streams/events/events`,
      JSON.stringify([
        event("in-a", { payload: { copy: 1 } }),
        event("in-a", { payload: { copy: 2 } }),
        event("in-b"),
        event("in-a", { payload: { copy: 3 } }),
      ]),
    );
    assert.equal(res.status, 200, res.text);
    assert.deepEqual([res.json.accepted, res.json.duplicates, res.json.rejected], [2, 2, 0]);
    const { rows } = await fx.db.query(`SELECT event_id, payload FROM events WHERE event_id LIKE 'in-%' ORDER BY 1`);
    assert.deepEqual(rows, [
      { event_id: "in-a", payload: { copy: 1 } },
      { event_id: "in-b", payload: { n: "in-b" } },
    ]);
  });

  test("with refused records in the same request (invalid, and one PostgreSQL refuses): counts stay exact", async () => {
    const res = await post(
      `${fx.daemon.base}/v1/streams/events/events`,
      JSON.stringify([
        event("mix-1"),
        event("mix-2", { timestamp: "2026-02-30T00:00:00Z" }),
        event("mix-1"),
        event("mix-3"),
        event("", {}),
        event("in-b"),
      ]),
    );
    assert.equal(res.status, 207, res.text);
    assert.deepEqual([res.json.accepted, res.json.duplicates, res.json.rejected], [2, 2, 2]);
    assert.deepEqual(
      res.json.errors.map((e: any) => e.index),
      [1, 4],
    );
    assert.deepEqual(await countEvents("mix-"), { rows: 2, distinct: 2 });
  });

  test("a request that is all duplicates is a success (200), not an error", async () => {
    const res = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify({ events: [event("in-a"), event("in-b")] }));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual([res.json.status, res.json.accepted, res.json.duplicates, res.json.errors], ["success", 0, 2, []]);
  });

  test("product_events deduplicate by their uuid; an id refused as invalid is not remembered", async () => {
    const id = "3b241101-e2bb-4255-8caf-4136c566a962";
    const product = (extra: Record<string, unknown> = {}) => ({
      event_id: id,
      user_id: "u",
      event_type: "t",
      event_time: Date.now(),
      properties: {},
      ...extra,
    });
    const invalid = await post(`${fx.daemon.base}/events`, JSON.stringify(product({ user_id: "" })));
    assert.equal(invalid.status, 422, invalid.text);
    const first = await post(`${fx.daemon.base}/events`, JSON.stringify(product()));
    assert.deepEqual([first.status, first.json.accepted, first.json.duplicates], [200, 1, 0]);
    const again = await post(`${fx.daemon.base}/events`, JSON.stringify([product(), product({ event_type: "other" })]));
    assert.deepEqual([again.status, again.json.accepted, again.json.duplicates], [200, 0, 2]);
    assert.equal((await fx.db.query(`SELECT count(*)::int AS n FROM product_events WHERE event_id = $1`, [id])).rows[0].n, 1);
  });

  test("with deduplication turned off in the configuration, the same id is stored each time and no duplicate is counted", async () => {
    const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
    config.deduplicate = { events: false };
    const file = path.join(os.tmpdir(), `ingestd-dedup-off-${process.pid}.json`);
    fs.writeFileSync(file, JSON.stringify(config));
    tmpFiles.push(file);
    const plain = await fx.startDaemon({ env: { INGESTD_CONFIG: file } });
    for (let i = 0; i < 2; i++) {
      const res = await post(`${plain.base}/v1/streams/events/events`, JSON.stringify([event("off-1"), event("off-1")]));
      assert.equal(res.status, 200, res.text);
      assert.deepEqual([res.json.accepted, res.json.duplicates], [2, 0]);
    }
    assert.deepEqual(await countEvents("off-"), { rows: 4, distinct: 1 });
    await plain.stop();
  });
});

describe("one group commit shared by several requests", () => {
  test("an id in two requests of one transaction is stored once; a record PostgreSQL refuses in one request costs the others nothing", async () => {
    // One worker and a long batch age: requests sent together share one transaction.
    const gc = await fx.startDaemon({ env: { WORKERS: "1", BATCH_TIMEOUT_MS: "1500", BATCH_SIZE: "100000" } });
    const bodies = [
      [event("gcd-1"), event("gcd-2", { timestamp: "2026-02-30T00:00:00Z" }), event("gcd-3")],
      [event("gcd-1"), event("gcd-4")],
      [event("gcd-3"), event("gcd-5"), event("gcd-5")],
    ];
    const answers = (await Promise.all(bodies.map((b) => post(`${gc.base}/v1/streams/events/events`, JSON.stringify(b))))).map(
      (r) => r.json,
    );
    assert.deepEqual(
      answers.map((a) => a.rejected),
      [1, 0, 0],
    );
    assert.equal(sum(answers, "accepted"), 4);
    assert.equal(sum(answers, "duplicates"), 3);
    answers.forEach((a, i) => assert.equal(a.accepted + a.duplicates + a.rejected, bodies[i].length));
    assert.deepEqual(await countEvents("gcd-"), { rows: 4, distinct: 4 });
    const txns = await fx.db.query(`SELECT count(DISTINCT ingested_at)::int AS n FROM events WHERE event_id LIKE 'gcd-%'`);
    assert.equal(txns.rows[0].n, 1, "one transaction");
    await gc.stop();
  });
});

describe("two daemons started at once on one empty database", () => {
  test("both come up (schema and partitions created once) and both ingest; ids sent to both are stored once", async () => {
    const fresh = await createDatabase();
    const pair = await Promise.all([fx.startDaemon({ databaseUrl: fresh.url }), fx.startDaemon({ databaseUrl: fresh.url })]);
    const [a, b] = pair;
    const parts = await fresh.query(
      `SELECT p.relname AS parent, count(*)::int AS n FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relkind = 'p' GROUP BY 1 ORDER BY 1`,
    );
    assert.deepEqual(
      parts.rows,
      [
        { parent: "events", n: 3 },
        { parent: "events_dedup", n: 2 },
        { parent: "ingest_batches", n: 4 },
        { parent: "ingest_dead_letters", n: 4 },
        { parent: "logs", n: 3 },
        { parent: "product_events", n: 3 },
        { parent: "product_events_dedup", n: 2 },
      ],
      "events: this month, next month and default; id state: the open generation and one ahead; bookkeeping: today, two days ahead and default; once each",
    );

    // Each daemon gets its own ids and the shared ones, all at once.
    const own = (p: string) => Array.from({ length: 2000 }, (_, i) => event(`${p}-${i}`));
    const shared = Array.from({ length: 3000 }, (_, i) => event(`two-shared-${i}`));
    const send = (d: Daemon, records: Record<string, unknown>[]) =>
      Promise.all(chunk(records, 500).map((c) => post(`${d.base}/v1/streams/events/events`, JSON.stringify(c))));
    const [ra, rb, rsa, rsb] = await Promise.all([send(a, own("two-a")), send(b, own("two-b")), send(a, shared), send(b, shared)]);
    const all = [...ra, ...rb, ...rsa, ...rsb];
    for (const r of all) assert.equal(r.status, 200, r.text);
    const answers = all.map((r) => r.json);
    assert.equal(sum(answers, "accepted"), 7000);
    assert.equal(sum(answers, "duplicates"), 3000);
    assert.deepEqual(await countEvents("two-", fresh.query), { rows: 7000, distinct: 7000 });

    // A daemon remembers what the other stored.
    const later = await post(`${a.base}/v1/streams/events/events`, JSON.stringify([event("two-b-5"), event("two-a-5")]));
    assert.deepEqual([later.json.accepted, later.json.duplicates], [0, 2]);
    const [sa, sb] = await Promise.all([a.stop(), b.stop()]);
    assert.deepEqual([sa.code, sb.code], [0, 0]);
  });
});

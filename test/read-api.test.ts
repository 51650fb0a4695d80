/**
 * Reading back (docs/http-api.md#reading-back) against the real daemon and PostgreSQL: keyset pages that
 * stay stable while rows are inserted concurrently (many rows sharing one timestamp, so the tiebreak
 * matters), both orders, time ranges, filters on indexed columns and the 400s naming what is allowed,
 * limits, cursors, 401/403 by key with a `read` list, dead letters listed per stream, and a keyed (TPC-H)
 * table paged by its primary key.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, post } from "./harness";
import { keysFileJson, newKey, tempDir } from "./security-helpers";

const writer = newKey("writer", ["*"]);
const reader = newKey("reader", ["logs"]);
const stranger = newKey("stranger", ["*"]);

let dir: string;
const fx = useDaemon({
  env: () => {
    dir = tempDir("ingestd-read-");
    const keysFile = path.join(dir, "keys.json");
    const keys = JSON.parse(keysFileJson([writer, reader]));
    keys.keys[1].read = ["events", "tpch"];
    fs.writeFileSync(keysFile, JSON.stringify(keys));
    return { API_KEYS_FILE: keysFile, WORKERS: "1" };
  },
});
after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const asWriter = { authorization: `Bearer ${writer.token}` };
const asReader = { authorization: `Bearer ${reader.token}` };

async function read(pathAndQuery: string, headers: Record<string, string> = asReader): Promise<{ status: number; json: any }> {
  const res = await fetch(`${fx.daemon.base}${pathAndQuery}`, { headers });
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) };
}

async function send(records: Record<string, unknown>[]): Promise<void> {
  const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(records), "application/json", asWriter);
  assert.equal(res.status, 200, res.text);
}

/** Every page of a read, following next_cursor; `between` runs after each page (concurrent inserts). */
async function allPages(query: string, between: (page: number) => Promise<void> = async () => {}): Promise<any[]> {
  const out: any[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 100; page++) {
    const sep = query.includes("?") ? "&" : "?";
    const res = await read(`${query}${cursor ? `${sep}cursor=${encodeURIComponent(cursor)}` : ""}`);
    assert.equal(res.status, 200, JSON.stringify(res.json));
    out.push(...res.json.records);
    cursor = res.json.next_cursor;
    if (cursor === null) return out;
    await between(page);
  }
  throw new Error("more than 100 pages");
}

const T0 = "2026-11-10T10:00:00.000Z";
const T1 = "2026-11-10T11:00:00.000Z";

describe("records", () => {
  test("pages are stable while rows are inserted concurrently: every row once, in order, in both orders", async () => {
    // 120 rows: 60 share T0 (only the tiebreak orders them), 60 at distinct later times.
    const base = Array.from({ length: 120 }, (_, i) =>
      event(`page-${String(i).padStart(3, "0")}`, {
        service_name: "pager",
        timestamp: i < 60 ? T0 : new Date(Date.parse(T1) + i * 1000).toISOString(),
      }),
    );
    await send(base);
    for (const order of ["asc", "desc"]) {
      let extra = 0;
      const rows = await allPages(`/v1/streams/events/records?service_name=pager&order=${order}&limit=17`, async () => {
        // Between pages: rows at T0 (the shared time), before everything, and after everything.
        const more = [T0, "2026-11-10T09:00:00.000Z", "2026-11-10T23:00:00.000Z"].map((ts) =>
          event(`page-${order}-late-${++extra}`, { service_name: "pager", timestamp: ts }),
        );
        await send(more);
      });
      const ids = rows.map((r) => r.event_id);
      assert.equal(new Set(ids).size, ids.length, `no row twice (${order})`);
      for (const r of base) assert.ok(ids.includes(r.event_id), `${r.event_id} read (${order})`);
      const times = rows.map((r) => Date.parse(r.event_time));
      for (let i = 1; i < times.length; i++) {
        assert.ok(order === "asc" ? times[i] >= times[i - 1] : times[i] <= times[i - 1], `ordered ${order} at ${i}`);
      }
      assert.ok(extra > 0, "rows were inserted between pages");
    }
  });

  test("records carry the stream's columns and ingested_at; since/until bound the time column", async () => {
    const page = await read(`/v1/streams/events/records?service_name=pager&since=${T1}&until=2026-11-10T11:01:00Z&order=asc&limit=1000`);
    assert.equal(page.status, 200);
    assert.equal(page.json.next_cursor, null);
    // Rows 60..119 are at T1 + i s: those with i < 60 s of T1 fall before 11:01.
    const ids = page.json.records.map((r: any) => r.event_id);
    assert.deepEqual(ids, []);
    const wide = await read(`/v1/streams/events/records?service_name=pager&since=${T1}&until=2026-11-10T11:02:00Z&order=asc`);
    assert.deepEqual(
      wide.json.records.map((r: any) => r.event_id),
      Array.from({ length: 60 }, (_, i) => `page-${String(60 + i).padStart(3, "0")}`),
    );
    const first = wide.json.records[0];
    assert.deepEqual(Object.keys(first).sort(), [
      "event_id",
      "event_time",
      "event_type",
      "ingested_at",
      "metadata",
      "payload",
      "service_name",
    ]);
    assert.deepEqual(first.payload, { n: "page-060" });
    assert.equal(Date.parse(first.event_time), Date.parse(T1) + 60_000);
  });

  test("filters on indexed columns; 400 naming the allowed ones for any other", async () => {
    await send([event("f-1", { service_name: "filt", event_type: "a" }), event("f-2", { service_name: "filt", event_type: "b" })]);
    const a = await read("/v1/streams/events/records?service_name=filt&event_type=b");
    assert.deepEqual(
      a.json.records.map((r: any) => r.event_id),
      ["f-2"],
    );
    for (const [q, param] of [
      ["event_id=f-1", "event_id"],
      ["payload=x", "payload"],
      ["nope=1", "nope"],
    ]) {
      const res = await read(`/v1/streams/events/records?${q}`);
      assert.equal(res.status, 400, q);
      assert.match(res.json.message, new RegExp(`^${param}: `));
      assert.match(res.json.message, /filter on service_name, event_type, event_time/);
    }
  });

  test("limit at most 1000; bad limit, order, time and cursor get 400 naming the parameter", async () => {
    const ok = await read("/v1/streams/events/records?limit=1000");
    assert.equal(ok.status, 200);
    for (const [q, param] of [
      ["limit=1001", "limit"],
      ["limit=0", "limit"],
      ["limit=ten", "limit"],
      ["order=up", "order"],
      ["since=yesterday", "since"],
      ["until=2026-13-45", "until"],
      ["cursor=garbage", "cursor"],
      ["limit=1&limit=2", "limit"],
    ]) {
      const res = await read(`/v1/streams/events/records?${q}`);
      assert.equal(res.status, 400, q);
      assert.equal(res.json.error, "bad_query");
      assert.match(res.json.message, new RegExp(`^${param}: `), q);
    }
    const page = await read("/v1/streams/events/records?limit=1&order=asc");
    const res = await read(`/v1/streams/events/records?limit=1&order=desc&cursor=${page.json.next_cursor}`);
    assert.equal(res.status, 400);
    assert.match(res.json.message, /^cursor: made for order=asc/);
  });

  test("401 without or with an unknown key, 403 without the stream in `read`, 404 unknown stream", async () => {
    assert.equal((await read("/v1/streams/events/records", {})).status, 401);
    assert.equal((await read("/v1/streams/events/records", { authorization: `Bearer ${stranger.token}` })).status, 401);
    const writerRead = await read("/v1/streams/events/records", asWriter);
    assert.equal(writerRead.status, 403);
    assert.match(writerRead.json.message, /API key writer may not read stream events/);
    // reader may write logs but not read it
    assert.equal((await read("/v1/streams/logs/records")).status, 403);
    assert.equal((await read("/v1/streams/nope/records")).status, 404);
    assert.equal((await read("/v1/streams/events/records", { "x-api-key": reader.token })).status, 200);
  });

  test("a keyed table pages by its primary key: the tpch alias grants reading orders", async () => {
    const lines = Array.from({ length: 30 }, (_, i) => `O|${9000 + i}|100|O|1.00|1996-01-02|5-LOW|Clerk#1|0|c`).join("\n");
    const res = await post(`${fx.daemon.base}/ingest/batch`, lines, "text/plain", asWriter);
    assert.equal(res.status, 200, res.text);
    const rows = await allPages("/v1/streams/orders/records?limit=7&order=asc");
    const keys = rows.map((r) => r.o_orderkey).filter((k) => k >= 9000);
    assert.deepEqual(
      keys,
      Array.from({ length: 30 }, (_, i) => 9000 + i),
    );
    const one = await read("/v1/streams/orders/records?o_orderkey=9007");
    assert.equal(one.json.records.length, 1);
    assert.equal(one.json.records[0].o_orderkey, 9007);
    const bad = await read("/v1/streams/orders/records?o_orderkey=abc");
    assert.equal(bad.status, 400);
    assert.match(bad.json.message, /^o_orderkey: expected an integer/);
  });
});

describe("dead letters", () => {
  test("rejected records are listed per stream with their errors; 403 for a stream not in `read`", async () => {
    const body = JSON.stringify([event("dl-ok"), { event_id: "dl-bad", service_name: "x" }]);
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, body, "application/json", asWriter);
    assert.equal(res.status, 207);
    const page = await read("/v1/dead-letters?stream=events&limit=10");
    assert.equal(page.status, 200, JSON.stringify(page.json));
    const letter = page.json.records.find((r: any) => JSON.parse(r.raw).event_id === "dl-bad");
    assert.ok(letter, "the rejected record is listed");
    assert.equal(letter.stream, "events");
    assert.equal(letter.source, "http");
    assert.equal(letter.replayed_at, null);
    assert.ok(letter.errors.some((e: any) => e.path === "event_type"));
    assert.equal(typeof letter.id, "number");
    assert.equal((await read("/v1/dead-letters?stream=logs")).status, 403);
    assert.equal((await read("/v1/dead-letters?stream=events", {})).status, 401);
    const bad = await read("/v1/dead-letters?service=x");
    assert.equal(bad.status, 400);
    assert.match(bad.json.message, /^service: unknown parameter/);
    // Without stream=: only the streams the key may read.
    const all = await read("/v1/dead-letters?limit=1000");
    assert.ok(all.json.records.length >= 1);
    for (const r of all.json.records) assert.ok(["events", "orders", "lineitem", "customer", "part", "tpch"].includes(r.stream));
  });
});

describe("replay needs write and read", () => {
  test("401 without a key; 403 unless the key may both write and read the stream", async () => {
    const body = JSON.stringify({ stream: "events", since: "2026-01-01T00:00:00Z" });
    const replay = (headers: Record<string, string>) => post(`${fx.daemon.base}/v1/dead-letters/replay`, body, "application/json", headers);
    assert.equal((await replay({})).status, 401);
    const writerOnly = await replay(asWriter);
    assert.equal(writerOnly.status, 403);
    assert.match(writerOnly.json.message, /may not read stream events/);
    const readerOnly = await replay(asReader);
    assert.equal(readerOnly.status, 403);
    assert.match(readerOnly.json.message, /may not write stream events/);
  });
});

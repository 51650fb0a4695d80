/**
 * The JSON streams of docs/streams.md (issue 3): `events`, `logs` and `product_events`, against the real daemon and
 * a real PostgreSQL. Valid records land with the right column values and SQL types; each kind of invalid
 * value is refused with a path naming its field; every refused record is kept in ingest_dead_letters.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, post } from "./harness";

const fx = useDaemon();

const streamUrl = (stream: string) => `${fx.daemon.base}/v1/streams/${stream}/events`;

/** SQL type of every column of a table, as information_schema names it. */
async function columnTypes(table: string): Promise<Record<string, string>> {
  const { rows } = await fx.db.query(
    `SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1`,
    [table],
  );
  return Object.fromEntries(rows.map((r) => [r.column_name, `${r.data_type}${r.is_nullable === "YES" ? " null" : ""}`]));
}

async function deadLetters(batchId: string) {
  const { rows } = await fx.db.query(
    `SELECT stream, source, batch_id, record_index, line, raw, errors, received_at FROM ingest_dead_letters WHERE batch_id = $1 ORDER BY record_index, line`,
    [batchId],
  );
  return rows;
}

/**
 * Sends each [record, field] one request at a time, so an error can only come from that record, and checks
 * that it is refused with a path naming `field` and stores nothing. Returns the answers.
 */
async function assertEachRefused(url: string, cases: [label: string, record: unknown, field: string][], count: () => Promise<number>) {
  const before = await count();
  const answers = [];
  for (const [label, record, field] of cases) {
    const res = await post(url, JSON.stringify(record));
    assert.equal(res.status, 422, `${label}: ${res.text}`);
    assert.equal(res.json.status, "rejected", label);
    assert.equal(res.json.accepted, 0, label);
    assert.equal(res.json.rejected, 1, label);
    const paths = res.json.errors.map((e: any) => e.path);
    assert.ok(paths.includes(field), `${label}: errors name ${field}: ${JSON.stringify(res.json.errors)}`);
    for (const e of res.json.errors) {
      assert.equal(e.index, 0);
      assert.equal(typeof e.expected, "string");
      assert.ok(e.message.startsWith(`${e.path}: `), `${label}: message "${e.message}" starts with its path`);
    }
    answers.push(res.json);
  }
  assert.equal(await count(), before, "nothing stored");
  return answers;
}

describe("events", () => {
  test("columns have the SQL types of the record's TypeScript type", async () => {
    assert.deepEqual(await columnTypes("events"), {
      event_id: "text",
      service_name: "text",
      event_type: "text",
      event_time: "timestamp with time zone",
      payload: "jsonb",
      metadata: "jsonb null",
      ingested_at: "timestamp with time zone",
    });
  });

  test("a valid record lands with every value as sent: ISO time with offset → the same instant, JSON objects as jsonb", async () => {
    const payload = { amount: "12.30", nested: { list: [1, 2.5, null, true], text: 'tab\tnewline\nquote"back\\slash ünï ✓' } };
    const record = event("ev-full", {
      service_name: "s".repeat(50),
      event_type: "t".repeat(100),
      timestamp: "2026-03-01T10:00:00.123+02:00",
      payload,
      metadata: { source: "sdk", v: 2 },
    });
    const res = await post(streamUrl("events"), JSON.stringify(record));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.accepted, 1);
    const { rows } = await fx.db.query(
      `SELECT event_id, service_name, event_type, to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') AS t, payload, metadata
         FROM events WHERE event_id = 'ev-full'`,
    );
    assert.deepEqual(rows, [
      {
        event_id: "ev-full",
        service_name: "s".repeat(50),
        event_type: "t".repeat(100),
        t: "2026-03-01T08:00:00.123",
        payload,
        metadata: { source: "sdk", v: 2 },
      },
    ]);
  });

  test("without timestamp the event time is the receive time; without metadata it is NULL", async () => {
    const before = Date.now();
    const res = await post(streamUrl("events"), JSON.stringify(event("ev-now")));
    assert.equal(res.status, 200, res.text);
    const { rows } = await fx.db.query(`SELECT event_time, metadata FROM events WHERE event_id = 'ev-now'`);
    assert.equal(rows.length, 1);
    const t = (rows[0].event_time as Date).getTime();
    assert.ok(t >= before - 1000 && t <= Date.now() + 1000, `event_time ${rows[0].event_time.toISOString()} is the receive time`);
    assert.equal(rows[0].metadata, null);
  });

  test("each kind of invalid value is refused with a path naming the field", async () => {
    const count = async () => Number((await fx.db.query(`SELECT count(*) AS n FROM events WHERE event_id LIKE 'bad-%'`)).rows[0].n);
    await assertEachRefused(
      streamUrl("events"),
      [
        ["event_id empty", event(""), "event_id"],
        ["event_id 129 chars", event("x".repeat(129)), "event_id"],
        ["event_id a number", event("bad-1", { event_id: 42 }), "event_id"],
        ["service_name empty", event("bad-2", { service_name: "" }), "service_name"],
        ["service_name 51 chars", event("bad-3", { service_name: "s".repeat(51) }), "service_name"],
        ["event_type 101 chars", event("bad-4", { event_type: "t".repeat(101) }), "event_type"],
        ["event_type missing", { event_id: "bad-5", service_name: "a", payload: {} }, "event_type"],
        ["payload missing", { event_id: "bad-6", service_name: "a", event_type: "b" }, "payload"],
        ["payload a string", event("bad-7", { payload: "text" }), "payload"],
        ["payload null", event("bad-8", { payload: null }), "payload"],
        ["timestamp not ISO-8601", event("bad-9", { timestamp: "yesterday" }), "timestamp"],
        ["timestamp a number", event("bad-10", { timestamp: 1700000000000 }), "timestamp"],
        ["metadata a string", event("bad-11", { metadata: "m" }), "metadata"],
        ["an unknown field", event("bad-12", { user: "u1" }), "user"],
      ],
      count,
    );
    // The boundaries themselves are accepted.
    const ok = await post(
      streamUrl("events"),
      JSON.stringify([event("x".repeat(128)), event("e", { service_name: "s" }), event("ev-emptypayload", { payload: {} })]),
    );
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.accepted, 3);
  });

  test("a record only PostgreSQL refuses (February 30th) is isolated and reported; the others of the request land", async () => {
    const res = await post(
      streamUrl("events"),
      JSON.stringify([event("feb-1"), event("feb-2", { timestamp: "2026-02-30T12:00:00Z" }), event("feb-3")]),
    );
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.accepted, 2);
    assert.equal(res.json.rejected, 1);
    assert.equal(res.json.errors.length, 1);
    assert.equal(res.json.errors[0].index, 1);
    assert.match(res.json.errors[0].message, /rejected by the database: .*out of range/);
    const { rows } = await fx.db.query(`SELECT event_id FROM events WHERE event_id LIKE 'feb-%' ORDER BY 1`);
    assert.deepEqual(
      rows.map((r) => r.event_id),
      ["feb-1", "feb-3"],
    );
    const dead = await deadLetters(res.json.batch_id);
    assert.equal(dead.length, 1);
    assert.equal(dead[0].record_index, 1);
    assert.deepEqual(JSON.parse(dead[0].raw), event("feb-2", { timestamp: "2026-02-30T12:00:00Z" }));
  });

  test("dead letters hold every refused record: stream, source, batch_id, index, raw text, errors, receive time", async () => {
    const before = Date.now();
    const records = [event("dl-ok-1"), event("", { service_name: "" }), event("dl-ok-2"), event("dl-bad", { payload: [1] })];
    const res = await post(streamUrl("events"), JSON.stringify(records));
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.rejected, 2);
    const dead = await deadLetters(res.json.batch_id);
    assert.equal(dead.length, 2);
    for (const [d, index] of [
      [dead[0], 1],
      [dead[1], 3],
    ] as const) {
      assert.equal(d.stream, "events");
      assert.equal(d.source, "http");
      assert.equal(d.batch_id, res.json.batch_id);
      assert.equal(d.record_index, index);
      assert.equal(d.line, null);
      assert.deepEqual(JSON.parse(d.raw), records[index], "raw is the record as received");
      const t = (d.received_at as Date).getTime();
      assert.ok(t >= before - 1000 && t <= Date.now() + 1000, "received_at is the receive time");
      for (const e of d.errors) assert.deepEqual(Object.keys(e).sort(), ["expected", "message", "path"]);
    }
    assert.deepEqual(dead[0].errors.map((e: any) => e.path).sort(), ["event_id", "service_name"]);
    assert.deepEqual(
      dead[1].errors.map((e: any) => e.path),
      ["payload"],
    );
    assert.deepEqual(res.json.errors.map((e: any) => [e.index, e.path]).sort(), [
      [1, "event_id"],
      [1, "service_name"],
      [3, "payload"],
    ]);
  });

  test("NDJSON: a malformed line and an invalid line are refused by line number; their dead letters keep the raw line", async () => {
    const body = [
      JSON.stringify(event("nd-1")),
      "{not json",
      "",
      JSON.stringify(event("nd-3", { event_type: "" })),
      JSON.stringify(event("nd-4")),
    ].join("\n");
    const res = await post(streamUrl("events"), body, "application/x-ndjson");
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.accepted, 2);
    assert.equal(res.json.rejected, 2);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.line, e.path]),
      [
        [2, "$"],
        [4, "event_type"],
      ],
    );
    const dead = await deadLetters(res.json.batch_id);
    assert.deepEqual(
      dead.map((d) => [d.line, d.raw]),
      [
        [2, "{not json"],
        [4, JSON.stringify(event("nd-3", { event_type: "" }))],
      ],
    );
  });
});

describe("logs", () => {
  test("columns and types; every severity lands; logged_at is the receive time; payload optional", async () => {
    assert.deepEqual(await columnTypes("logs"), {
      service_name: "text",
      severity: "text",
      message: "text",
      payload: "jsonb null",
      logged_at: "timestamp with time zone",
      ingested_at: "timestamp with time zone",
    });
    const before = Date.now();
    const records = ["INFO", "WARN", "ERROR", "DEBUG", "CRITICAL"].map((severity, i) => ({
      service_name: "log-svc",
      severity,
      message: `message ${i}\twith tab`,
      ...(i % 2 === 0 ? { payload: { i, ok: true } } : {}),
    }));
    const res = await post(streamUrl("logs"), records.map((r) => JSON.stringify(r)).join("\n"), "application/x-ndjson");
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.stream, "logs");
    assert.equal(res.json.accepted, 5);
    assert.equal(res.json.duplicates, 0);
    const { rows } = await fx.db.query(
      `SELECT service_name, severity, message, payload, logged_at FROM logs WHERE service_name = 'log-svc' ORDER BY message`,
    );
    assert.deepEqual(
      rows.map(({ logged_at, ...r }) => r),
      records.map((r) => ({ service_name: r.service_name, severity: r.severity, message: r.message, payload: (r as any).payload ?? null })),
    );
    for (const r of rows) {
      const t = (r.logged_at as Date).getTime();
      assert.ok(t >= before - 1000 && t <= Date.now() + 1000);
    }
  });

  test("each kind of invalid value is refused with a path naming the field", async () => {
    const count = async () => Number((await fx.db.query(`SELECT count(*) AS n FROM logs WHERE service_name = 'bad-logs'`)).rows[0].n);
    const log = (extra: Record<string, unknown>) => ({ service_name: "bad-logs", severity: "INFO", message: "m", ...extra });
    await assertEachRefused(
      streamUrl("logs"),
      [
        ["severity not in the enum", log({ severity: "FATAL" }), "severity"],
        ["severity lower case", log({ severity: "info" }), "severity"],
        ["message empty", log({ message: "" }), "message"],
        ["message missing", { service_name: "bad-logs", severity: "INFO" }, "message"],
        ["service_name 51 chars", log({ service_name: "s".repeat(51) }), "service_name"],
        ["payload an array", log({ payload: [1, 2] }), "payload"],
        ["an unknown field", log({ timestamp: "2026-01-01T00:00:00Z" }), "timestamp"],
      ],
      count,
    );
  });

  test("logs are not deduplicated: the same record twice is two rows", async () => {
    const record = { service_name: "twice-svc", severity: "WARN", message: "same" };
    for (let i = 0; i < 2; i++) {
      const res = await post(streamUrl("logs"), JSON.stringify(record));
      assert.equal(res.status, 200, res.text);
      assert.equal(res.json.duplicates, 0);
    }
    assert.equal(Number((await fx.db.query(`SELECT count(*) AS n FROM logs WHERE service_name = 'twice-svc'`)).rows[0].n), 2);
  });
});

describe("product_events (POST /events)", () => {
  const product = (extra: Record<string, unknown> = {}) => ({
    event_id: randomUUID(),
    user_id: "user-1",
    event_type: "page_view",
    event_time: 1767225600123, // 2026-01-01T00:00:00.123Z
    properties: { path: "/pricing", price: 9.99 },
    ...extra,
  });

  test("columns: uuid id, epoch-ms event_time as timestamptz, optional experiment fields NULL when absent", async () => {
    assert.deepEqual(await columnTypes("product_events"), {
      event_id: "uuid",
      user_id: "text",
      event_type: "text",
      event_time: "timestamp with time zone",
      experiment_id: "text null",
      variant: "text null",
      properties: "jsonb",
      ingested_at: "timestamp with time zone",
    });
  });

  test("one object → 200; the row holds the uuid, the exact millisecond and the properties", async () => {
    const record = product({ experiment_id: "exp-42", variant: "B" });
    const res = await post(`${fx.daemon.base}/events`, JSON.stringify(record));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.status, "success");
    assert.equal(res.json.stream, "product_events");
    assert.equal(res.json.accepted, 1);
    const { rows } = await fx.db.query(
      `SELECT event_id::text AS id, user_id, event_type, (extract(epoch FROM event_time) * 1000)::bigint AS ms,
              to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') AS t, experiment_id, variant, properties
         FROM product_events WHERE event_id = $1`,
      [record.event_id],
    );
    assert.deepEqual(rows, [
      {
        id: record.event_id,
        user_id: "user-1",
        event_type: "page_view",
        ms: "1767225600123",
        t: "2026-01-01T00:00:00.123",
        experiment_id: "exp-42",
        variant: "B",
        properties: record.properties,
      },
    ]);
  });

  test("an array → 200 with every record; absent experiment fields are NULL; the epoch bounds 0 and 9999-12-31 land", async () => {
    const records = [product({ event_time: 0 }), product({ event_time: 253402300799999 }), product()];
    const res = await post(`${fx.daemon.base}/events`, JSON.stringify(records));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.accepted, 3);
    const { rows } = await fx.db.query(
      `SELECT event_id::text AS id, to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') AS t, experiment_id, variant
         FROM product_events WHERE event_id = ANY($1::uuid[]) ORDER BY event_time`,
      [records.map((r) => r.event_id)],
    );
    assert.deepEqual(rows, [
      { id: records[0].event_id, t: "1970-01-01T00:00:00.000", experiment_id: null, variant: null },
      { id: records[2].event_id, t: "2026-01-01T00:00:00.123", experiment_id: null, variant: null },
      { id: records[1].event_id, t: "9999-12-31T23:59:59.999", experiment_id: null, variant: null },
    ]);
  });

  test("the canonical route /v1/streams/product_events/events stores the same way", async () => {
    const record = product();
    const res = await post(streamUrl("product_events"), JSON.stringify(record));
    assert.equal(res.status, 200, res.text);
    assert.equal(
      Number((await fx.db.query(`SELECT count(*) AS n FROM product_events WHERE event_id = $1`, [record.event_id])).rows[0].n),
      1,
    );
  });

  test("each kind of invalid value is refused with a path naming the field; dead letters keep them under product_events", async () => {
    const count = async () => Number((await fx.db.query(`SELECT count(*) AS n FROM product_events WHERE user_id = 'bad-user'`)).rows[0].n);
    const bad = (extra: Record<string, unknown>) => product({ user_id: "bad-user", ...extra });
    const answers = await assertEachRefused(
      `${fx.daemon.base}/events`,
      [
        ["event_id not a uuid", bad({ event_id: "not-a-uuid" }), "event_id"],
        ["event_id missing", { user_id: "bad-user", event_type: "x", event_time: 1, properties: {} }, "event_id"],
        ["user_id empty", bad({ user_id: "" }), "user_id"],
        ["event_type 101 chars", bad({ event_type: "e".repeat(101) }), "event_type"],
        ["event_time negative", bad({ event_time: -1 }), "event_time"],
        ["event_time fractional", bad({ event_time: 1.5 }), "event_time"],
        ["event_time as a string", bad({ event_time: "1767225600123" }), "event_time"],
        ["event_time an ISO string", bad({ event_time: "2026-01-01T00:00:00Z" }), "event_time"],
        ["event_time past year 9999", bad({ event_time: 253402300800000 }), "event_time"],
        ["experiment_id empty", bad({ experiment_id: "" }), "experiment_id"],
        ["variant a number", bad({ variant: 2 }), "variant"],
        ["properties missing", { event_id: randomUUID(), user_id: "bad-user", event_type: "x", event_time: 1 }, "properties"],
        ["properties an array", bad({ properties: [] }), "properties"],
        ["an unknown field", bad({ session: "s" }), "session"],
      ],
      count,
    );
    const dead = await deadLetters(answers[0].batch_id);
    assert.equal(dead.length, 1);
    assert.equal(dead[0].stream, "product_events");
    assert.equal(dead[0].record_index, 0);
    assert.equal(JSON.parse(dead[0].raw).event_id, "not-a-uuid");
    assert.equal(dead[0].errors[0].path, "event_id");
  });

  test("a uuid in upper case is the same id: the second is a duplicate", async () => {
    const record = product();
    const first = await post(`${fx.daemon.base}/events`, JSON.stringify(record));
    assert.equal(first.status, 200, first.text);
    const again = await post(`${fx.daemon.base}/events`, JSON.stringify({ ...record, event_id: record.event_id.toUpperCase() }));
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.accepted, 0);
    assert.equal(again.json.duplicates, 1);
    assert.equal(
      Number((await fx.db.query(`SELECT count(*) AS n FROM product_events WHERE event_id = $1`, [record.event_id])).rows[0].n),
      1,
    );
  });
});

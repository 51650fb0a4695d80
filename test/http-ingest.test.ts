/**
 * HTTP ingest API (docs/http-api.md) against the real daemon and a real PostgreSQL: every answer is checked against
 * the rows that actually landed in `events`.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, get, post, rawRequest, waitFor, type TestDb } from "./harness";

/** A database and a daemon on it; the daemons and clusters tests start through fx are stopped in after() too. */
const fx = useDaemon();

const ingestUrl = (stream = "events") => `${fx.daemon.base}/v1/streams/${stream}/events`;

async function rowsWithPrefix(prefix: string, on: TestDb = fx.db) {
  const res = await on.query(
    `SELECT event_id, service_name, event_type, event_time, payload, metadata, ingested_at
       FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id`,
    [prefix],
  );
  return res.rows;
}

async function idsWithPrefix(prefix: string, on: TestDb = fx.db): Promise<string[]> {
  return (await rowsWithPrefix(prefix, on)).map((r) => r.event_id);
}

/** Sum of the samples of a Prometheus metric whose labels include all of `labels`. */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const labelText = m[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

function assertSuccessShape(json: any, accepted: number): void {
  assert.equal(json.status, "success");
  assert.equal(json.stream, "events");
  assert.equal(typeof json.batch_id, "string");
  assert.ok(json.batch_id.length > 0, "batch_id is not empty");
  assert.equal(json.accepted, accepted);
  assert.equal(json.rejected, 0);
  assert.equal(json.duplicates, 0);
  assert.deepEqual(json.errors, []);
  assert.equal(typeof json.duration_ms, "number");
  assert.ok(json.duration_ms >= 0);
}

describe("POST /v1/streams/{stream}/events: accepted bodies", () => {
  test("one JSON object → 200 success, and the row holds every field as sent", async () => {
    const record = event("obj-1", {
      service_name: "billing",
      event_type: "invoice.paid",
      timestamp: "2026-03-04T05:06:07.089Z",
      payload: { amount: 12.5, items: [1, 2], nested: { ok: true } },
      metadata: { region: "eu", trace: "abc" },
    });
    const res = await post(ingestUrl(), JSON.stringify(record));
    assert.equal(res.status, 200, res.text);
    assertSuccessShape(res.json, 1);
    const rows = await rowsWithPrefix("obj-");
    assert.equal(rows.length, 1);
    const row = rows[0];
    assert.equal(row.event_id, "obj-1");
    assert.equal(row.service_name, "billing");
    assert.equal(row.event_type, "invoice.paid");
    assert.equal(new Date(row.event_time).toISOString(), "2026-03-04T05:06:07.089Z");
    assert.deepEqual(row.payload, { amount: 12.5, items: [1, 2], nested: { ok: true } });
    assert.deepEqual(row.metadata, { region: "eu", trace: "abc" });
    assert.ok(row.ingested_at instanceof Date);
  });

  test("an event without timestamp gets the receive time and NULL metadata", async () => {
    const t0 = Date.now();
    const res = await post(ingestUrl(), JSON.stringify(event("notime-1")));
    const t1 = Date.now();
    assert.equal(res.status, 200, res.text);
    const [row] = await rowsWithPrefix("notime-");
    const at = new Date(row.event_time).getTime();
    // Same machine, same clock: the default time lies within the request's round trip (1 s of slack).
    assert.ok(at >= t0 - 1000 && at <= t1 + 1000, `event_time ${row.event_time} not within [${t0}, ${t1}]`);
    assert.equal(row.metadata, null);
  });

  test("a JSON array → 200 with accepted equal to its length, and exactly those rows", async () => {
    const records = Array.from({ length: 25 }, (_, i) => event(`arr-${String(i).padStart(2, "0")}`));
    const res = await post(ingestUrl(), JSON.stringify(records));
    assert.equal(res.status, 200, res.text);
    assertSuccessShape(res.json, 25);
    assert.deepEqual(
      await idsWithPrefix("arr-"),
      records.map((r) => r.event_id),
    );
  });

  test("NDJSON (application/x-ndjson) → 200, blank lines and CRLF tolerated", async () => {
    const body = [event("nd-1"), event("nd-2"), event("nd-3")].map((r) => JSON.stringify(r)).join("\r\n") + "\n\n";
    const res = await post(ingestUrl(), body, "application/x-ndjson");
    assert.equal(res.status, 200, res.text);
    assertSuccessShape(res.json, 3);
    assert.deepEqual(await idsWithPrefix("nd-"), ["nd-1", "nd-2", "nd-3"]);
  });

  test("content type with parameters (application/json; charset=utf-8) is accepted", async () => {
    const res = await post(ingestUrl(), JSON.stringify(event("ctparam-1")), "application/json; charset=utf-8");
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(await idsWithPrefix("ctparam-"), ["ctparam-1"]);
  });

  test("payload text with tabs, newlines, backslashes and non-ASCII survives COPY encoding", async () => {
    const tricky = { text: "tab\there\nnew line \\ back\\slash \\N é 😀 \r end", quote: "\"'", empty: "" };
    const res = await post(ingestUrl(), JSON.stringify(event("esc-1", { payload: tricky, event_type: "a\tb\\c" })));
    assert.equal(res.status, 200, res.text);
    const [row] = await rowsWithPrefix("esc-");
    assert.deepEqual(row.payload, tricky);
    assert.equal(row.event_type, "a\tb\\c");
  });
});

describe("POST /v1/streams/{stream}/events: rejected records and bodies", () => {
  test("mixed valid and invalid records → 207 partial naming each bad field; only the valid rows land", async () => {
    const records = [
      event("mix-0"),
      { event_id: "mix-1", event_type: "click", payload: {} }, // service_name missing
      event("mix-2"),
      event("mix-3", { service_name: "s".repeat(51) }), // too long (max 50)
      event("mix-4", { bogus: 1 }), // unknown field: the type is exact
      event("mix-5", { timestamp: "yesterday" }), // not ISO-8601
      event("mix-6", { payload: "not an object" }),
      event("mix-7"),
    ];
    const res = await post(ingestUrl(), JSON.stringify(records));
    assert.equal(res.status, 207, res.text);
    const json = res.json;
    assert.equal(json.status, "partial");
    assert.equal(json.stream, "events");
    assert.equal(json.accepted, 3);
    assert.equal(json.rejected, 5);
    assert.ok(Array.isArray(json.errors));
    for (const e of json.errors) {
      assert.equal(typeof e.index, "number");
      assert.equal(typeof e.path, "string");
      assert.equal(typeof e.expected, "string");
      assert.equal(typeof e.message, "string");
    }
    const byIndex = (i: number) => json.errors.filter((e: any) => e.index === i).map((e: any) => e.path);
    assert.deepEqual(byIndex(1), ["service_name"]);
    assert.deepEqual(byIndex(3), ["service_name"]);
    assert.deepEqual(byIndex(4), ["bogus"]);
    assert.deepEqual(byIndex(5), ["timestamp"]);
    assert.deepEqual(byIndex(6), ["payload"]);
    assert.deepEqual([...new Set(json.errors.map((e: any) => e.index))], [1, 3, 4, 5, 6], "errors in record order");
    assert.deepEqual(await idsWithPrefix("mix-"), ["mix-0", "mix-2", "mix-7"]);
  });

  test("NDJSON with a malformed line → 207, the error names the line; the other lines land", async () => {
    const body = `${JSON.stringify(event("ndmix-1"))}\n{"event_id": "ndmix-2", \n${JSON.stringify(event("ndmix-3"))}\n`;
    const res = await post(ingestUrl(), body, "application/x-ndjson");
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.accepted, 2);
    assert.equal(res.json.rejected, 1);
    assert.equal(res.json.errors.length, 1);
    assert.equal(res.json.errors[0].index, 1);
    assert.equal(res.json.errors[0].line, 2);
    assert.deepEqual(await idsWithPrefix("ndmix-"), ["ndmix-1", "ndmix-3"]);
  });

  test("every record invalid → 422 and nothing lands", async () => {
    const records = [{ event_id: "bad-1" }, event("bad-2", { event_type: "" }), event("bad-3", { payload: [1] })];
    const res = await post(ingestUrl(), JSON.stringify(records));
    assert.equal(res.status, 422, res.text);
    assert.equal(res.json.accepted, 0);
    assert.equal(res.json.rejected, 3);
    assert.ok(res.json.errors.some((e: any) => e.index === 1 && e.path === "event_type"));
    assert.deepEqual(await idsWithPrefix("bad-"), []);
  });

  test("malformed JSON → 400 and nothing lands", async () => {
    const res = await post(ingestUrl(), `[${JSON.stringify(event("malformed-1"))}, {"event_id": `);
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.status, "error");
    assert.deepEqual(await idsWithPrefix("malformed-"), []);
  });

  test("an empty JSON array → 400 (no records at all)", async () => {
    const res = await post(ingestUrl(), "[]");
    assert.equal(res.status, 400, res.text);
  });

  test("unknown stream → 404 naming the stream", async () => {
    const res = await post(ingestUrl("no_such_stream"), JSON.stringify(event("unk-1")));
    assert.equal(res.status, 404, res.text);
    assert.match(res.json.message, /no_such_stream/);
    assert.deepEqual(await idsWithPrefix("unk-"), []);
  });

  test("GET (and PUT) on the ingest route → 405 with Allow: POST", async () => {
    for (const method of ["GET", "PUT"]) {
      const res = await get(ingestUrl(), method);
      assert.equal(res.status, 405, `${method}: ${res.text}`);
      assert.equal(res.headers.get("allow"), "POST");
    }
  });

  test("unsupported content types → 415 and nothing lands", async () => {
    for (const type of ["application/xml", "text/plain", "application/x-www-form-urlencoded"]) {
      const res = await post(ingestUrl(), JSON.stringify(event("ct415-1")), type);
      assert.equal(res.status, 415, `${type}: ${res.text}`);
    }
    const res = await fetch(ingestUrl(), { method: "POST", body: new Uint8Array(Buffer.from(JSON.stringify(event("ct415-2")))) });
    assert.equal(res.status, 415, "no content type at all");
    await res.arrayBuffer();
    assert.deepEqual(await idsWithPrefix("ct415-"), []);
  });

  test("no Content-Length (Transfer-Encoding: chunked) → 411 and nothing lands", async () => {
    // fetch always sends a length for a known body; a raw socket sends a chunked one.
    const chunk = JSON.stringify(event("chunked-1"));
    const res = await rawRequest(
      fx.daemon.port,
      "POST /v1/streams/events/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
        "Transfer-Encoding: chunked\r\n\r\n",
      `${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`,
    );
    assert.equal(res.status, 411, `${res.head}\n${res.body}`);
    assert.equal(JSON.parse(res.body).error, "length_required");
    assert.deepEqual(await idsWithPrefix("chunked-"), []);
  });

  test("a body over MAX_BODY_MB → 413 and nothing lands", async () => {
    const small = await fx.startDaemon({ env: { MAX_BODY_MB: "1" } });
    const big = JSON.stringify(event("big-1", { payload: { s: "x".repeat(1024 * 1024) } }));
    assert.ok(big.length > 1024 * 1024);
    const res = await post(`${small.base}/v1/streams/events/events`, big);
    assert.equal(res.status, 413, res.text);
    assert.equal(res.json.error, "body_too_large");
    // Just under the limit is fine on the same daemon.
    const fits = JSON.stringify(event("big-2", { payload: { s: "y".repeat(1024 * 1024 - 200) } }));
    assert.ok(fits.length <= 1024 * 1024);
    const ok = await post(`${small.base}/v1/streams/events/events`, fits);
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(await idsWithPrefix("big-"), ["big-2"]);
  });
});

describe("POST /v1/ingest/batch (envelope)", () => {
  test("{events, batch_id, priority} → 200 echoing batch_id; the rows land", async () => {
    const body = { events: [event("env-1"), event("env-2")], batch_id: "x", priority: 5 };
    const res = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify(body));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.status, "success");
    assert.equal(res.json.batch_id, "x");
    assert.equal(res.json.accepted, 2);
    assert.deepEqual(await idsWithPrefix("env-"), ["env-1", "env-2"]);
  });

  test("a bad envelope (events not an array, priority out of range) → 400 and nothing lands", async () => {
    const notArray = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify({ events: event("envbad-1") }));
    assert.equal(notArray.status, 400, notArray.text);
    const badPriority = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify({ events: [event("envbad-2")], priority: 11 }));
    assert.equal(badPriority.status, 400, badPriority.text);
    const bareArray = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify([event("envbad-3")]));
    assert.equal(bareArray.status, 400, bareArray.text);
    assert.deepEqual(await idsWithPrefix("envbad-"), []);
  });
});

describe("Prefer: respond-async", () => {
  test("→ 202 {status: accepted, batch_id} at once; the rows land shortly after", async () => {
    const records = Array.from({ length: 10 }, (_, i) => event(`async-${i}`));
    const res = await post(ingestUrl(), JSON.stringify(records), "application/json", { Prefer: "respond-async" });
    assert.equal(res.status, 202, res.text);
    assert.equal(res.json.status, "accepted");
    assert.equal(typeof res.json.batch_id, "string");
    assert.ok(res.json.batch_id.length > 0);
    await waitFor("the async rows", async () => (await idsWithPrefix("async-")).length === 10, 10_000);
  });
});

describe("operations endpoints", () => {
  test("GET /health and /v1/health → 200 healthy, database connected", async () => {
    for (const path of ["/health", "/v1/health"]) {
      const res = await get(`${fx.daemon.base}${path}`);
      assert.equal(res.status, 200, `${path}: ${res.text}`);
      assert.equal(res.json.status, "healthy");
      assert.equal(res.json.database, "connected");
      assert.ok(res.json.streams.includes("events"));
      assert.equal(typeof res.json.version, "string");
      assert.equal(typeof res.json.uptime_seconds, "number");
    }
  });

  test("GET /metrics counters and the ack histogram move with traffic", async () => {
    const before = (await get(`${fx.daemon.base}/metrics`)).text;
    const records = Array.from({ length: 7 }, (_, i) => event(`metrics-${i}`));
    const res = await post(ingestUrl(), JSON.stringify(records));
    assert.equal(res.status, 200, res.text);
    const after = await get(`${fx.daemon.base}/metrics`);
    assert.equal(after.status, 200);
    assert.match(after.headers.get("content-type") ?? "", /text\/plain/);
    const delta = (name: string, labels: Record<string, string>) =>
      metricValue(after.text, name, labels) - metricValue(before, name, labels);
    assert.ok(delta("ingestd_http_requests_total", { status: "200" }) >= 1, "http requests counter moved");
    assert.equal(delta("ingestd_events_total", { stream: "events", outcome: "accepted" }), 7);
    assert.equal(delta("ingestd_ack_latency_seconds_count", { stream: "events", transport: "http" }), 1);
    // /v1/metrics is the same registry.
    const v1 = await get(`${fx.daemon.base}/v1/metrics`);
    assert.equal(v1.status, 200);
    assert.ok(metricValue(v1.text, "ingestd_events_total", { outcome: "accepted" }) >= 7);
  });

  test("GET /v1/latency reports the ack stage after traffic", async () => {
    const res = await post(ingestUrl(), JSON.stringify(event("latency-1")));
    assert.equal(res.status, 200, res.text);
    const lat = await get(`${fx.daemon.base}/v1/latency`);
    assert.equal(lat.status, 200, lat.text);
    const ack = lat.json.since_start?.ack?.events;
    assert.ok(ack, `no since_start.ack.events in ${lat.text}`);
    assert.ok(ack.count > 0);
    assert.ok(ack.p50_ms > 0 && ack.p50_ms <= ack.p99_ms && ack.p99_ms <= ack.max_ms, JSON.stringify(ack));
    for (const stage of ["receive", "validate", "commit"]) {
      assert.ok(lat.json.since_start?.[stage]?.events?.count > 0, `stage ${stage} recorded`);
    }
  });
});

describe("PostgreSQL outage", () => {
  test("database down → /health 503 disconnected, ingest 503 with Retry-After; recovers when it returns", async () => {
    const own = await fx.startDb();
    const d = await fx.startDaemon({ databaseUrl: own.url });
    const url = `${d.base}/v1/streams/events/events`;
    const first = await post(url, JSON.stringify(event("outage-before")));
    assert.equal(first.status, 200, first.text);

    await own.server.stop();
    const health = await waitFor(
      "health to report the outage",
      async () => {
        const h = await get(`${d.base}/health`);
        return h.status === 503 ? h : null;
      },
      15_000,
      200,
    );
    assert.equal(health.json.database, "disconnected");
    assert.ok(health.headers.get("retry-after"));

    const during = await post(url, JSON.stringify(event("outage-during")));
    assert.equal(during.status, 503, during.text);
    assert.match(during.headers.get("retry-after") ?? "", /^\d+$/);

    await own.server.restart();
    await waitFor("health to recover", async () => (await get(`${d.base}/health`)).status === 200, 15_000, 200);
    const afterward = await post(url, JSON.stringify(event("outage-after")));
    assert.equal(afterward.status, 200, afterward.text);
    // The test's own pool may hold connections the restart broke: retry the read a few times.
    const ids = await waitFor("rows after recovery", () => idsWithPrefix("outage-", own).catch(() => null), 5000, 100);
    assert.deepEqual(ids, ["outage-after", "outage-before"], "nothing from the refused request was stored");
  });
});

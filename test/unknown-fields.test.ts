/**
 * Unknown fields, per stream (docs/streams.md#unknown-fields): refused by default, naming the field; ignored and
 * dropped on a stream configured with `unknownFields: "ignore"`, so a producer adding a field keeps
 * ingesting. Against the real daemon (HTTP and WebSocket) and a real PostgreSQL; the rows that landed are
 * read back. The OpenAPI document says which stream does what, and a bad setting is a configuration error.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { CLI, get, openWs, post, ROOT } from "./harness";
import { configEnv } from "./ops-tools";

const shipped = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
let dir: string;

function configFile(name: string, content: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify(content, null, 2));
  return file;
}

/** A database, and a daemon whose configuration lets `logs` drop unknown fields. */
const fx = useDaemon({
  env: () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-unknown-fields-"));
    return { INGESTD_CONFIG: configFile("ignoring-logs.json", { ...shipped, streams: { logs: { unknownFields: "ignore" } } }) };
  },
});
fx.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

describe("a stream refusing unknown fields (the default: events)", () => {
  test("a record with an extra field → 422 naming the field; nothing stored; the record is a dead letter", async () => {
    const record = { event_id: "uf-strict-1", service_name: "svc", event_type: "click", payload: { a: 1 }, region: "eu-west-1" };
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(record));
    assert.equal(res.status, 422, res.text);
    assert.deepEqual([res.json.accepted, res.json.rejected], [0, 1]);
    assert.equal(res.json.errors.length, 1);
    assert.equal(res.json.errors[0].path, "region");
    assert.match(res.json.errors[0].message, /^region: unknown field/);
    const rows = await fx.db.query(`SELECT count(*)::int AS n FROM events WHERE event_id = 'uf-strict-1'`);
    assert.equal(rows.rows[0].n, 0);
    const dead = await fx.db.query(`SELECT raw FROM ingest_dead_letters WHERE stream = 'events' AND raw LIKE '%uf-strict-1%'`);
    assert.equal(dead.rows.length, 1);
    assert.equal(JSON.parse(dead.rows[0].raw).region, "eu-west-1", "the dead letter keeps the record as received");
  });
});

describe("a stream ignoring unknown fields (logs, by the configuration)", () => {
  test("HTTP: records with extra fields → 200, stored without them; a record invalid otherwise is still refused", async () => {
    const body = [
      { service_name: "uf-api", severity: "INFO", message: "started", build: "abc123", host: { name: "h1" } },
      { service_name: "uf-api", severity: "WARN", message: "slow", payload: { ms: 900, nested: { keep: true } }, shard: 7 },
      { service_name: "uf-api", severity: "LOUD", message: "bad severity", extra: 1 },
    ];
    const res = await post(`${fx.daemon.base}/v1/streams/logs/events`, JSON.stringify(body));
    assert.equal(res.status, 207, res.text);
    assert.deepEqual([res.json.accepted, res.json.rejected], [2, 1]);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.index, e.path]),
      [[2, "severity"]],
      "only the real error, not the extra field",
    );

    const rows = await fx.db.query(
      `SELECT severity, message, payload, to_jsonb(l)::text AS whole FROM logs l WHERE service_name = 'uf-api' ORDER BY severity`,
    );
    assert.deepEqual(
      rows.rows.map((r) => [r.severity, r.message, r.payload]),
      [
        ["INFO", "started", null],
        ["WARN", "slow", { ms: 900, nested: { keep: true } }],
      ],
    );
    for (const r of rows.rows) {
      for (const dropped of ["build", "abc123", "h1", "shard"])
        assert.ok(!r.whole.includes(dropped), `${dropped} is not stored anywhere in ${r.whole}`);
    }
  });

  test("WebSocket: the same, acked after commit", async () => {
    const ws = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=logs`);
    try {
      ws.send(JSON.stringify([{ service_name: "uf-ws", severity: "ERROR", message: "boom", trace_id: "t-1" }]));
      const [ack] = await ws.waitForAcks(1);
      assert.deepEqual([ack.type, ack.accepted, ack.rejected], ["ack", 1, 0], JSON.stringify(ack));
    } finally {
      ws.socket.close();
    }
    const rows = await fx.db.query(`SELECT to_jsonb(l)::text AS whole FROM logs l WHERE service_name = 'uf-ws'`);
    assert.equal(rows.rows.length, 1);
    assert.ok(!rows.rows[0].whole.includes("t-1"));
  });
});

describe("the OpenAPI document and the configuration", () => {
  test("additionalProperties: false for a refusing stream, true for an ignoring one", async () => {
    const doc = (await get(`${fx.daemon.base}/openapi.json`)).json;
    assert.equal(doc.components.schemas.EventRecord.additionalProperties, false);
    assert.equal(doc.components.schemas.LogRecord.additionalProperties, true);
    assert.equal(doc.components.schemas.OrderRecord.additionalProperties, false);
  });

  test("check-config refuses an unknown stream, an unknown value, and a stream with no validator that ignores", () => {
    const cases: [unknown, RegExp][] = [
      [{ nope: { unknownFields: "ignore" } }, /streams\.nope: no such stream/],
      [{ logs: { unknownFields: "drop" } }, /streams\.logs\.unknownFields: expected/],
      [{ orders: { unknownFields: "ignore" } }, /streams\.orders\.unknownFields: "ignore" needs validateIgnoringUnknown/],
    ];
    for (const [streams, expect] of cases) {
      const file = configFile(`bad-${Math.random().toString(36).slice(2)}.json`, { ...shipped, streams });
      const r = spawnSync(process.execPath, [CLI, "check-config"], {
        cwd: ROOT,
        env: configEnv({ INGESTD_CONFIG: file }),
        encoding: "utf8",
        timeout: 30_000,
      });
      assert.equal(r.status, 78, `${JSON.stringify(streams)}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, expect);
    }
  });
});

/**
 * GET /openapi.json (docs/http-api.md, issue 3): a valid OpenAPI 3.1 document — checked with a real validator from the
 * registry, @seriousme/openapi-schema-validator — whose request schemas are the ones typia generated from the
 * record types. The constraints the document states are then tried against the running daemon: a value at a
 * stated bound is accepted, one past it is refused naming the field, so the document cannot drift from the
 * validators.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { streams } from "../config/streams";
import { useDaemon } from "./fixture";
import { get, post } from "./harness";

const fx = useDaemon();
let doc: any;

fx.setup(async () => {
  const res = await get(`${fx.daemon.base}/openapi.json`);
  assert.equal(res.status, 200, res.text);
  doc = res.json;
});

/** Follows `#/components/schemas/...` references. */
function deref(schema: any): any {
  let s = schema;
  for (let i = 0; i < 10 && s && typeof s.$ref === "string"; i++) {
    const name = s.$ref.replace("#/components/schemas/", "");
    s = doc.components.schemas[name];
    assert.ok(s, `${schema.$ref} resolves`);
  }
  return s;
}

/** The record schema a stream's canonical route takes as JSON (one object, or the items of an array). */
function recordSchema(path: string, contentType = "application/json"): any {
  const body = doc.paths[path].post.requestBody.content[contentType].schema;
  const variants = body.oneOf ?? [body];
  const object = variants.find((v: any) => v.$ref);
  const array = variants.find((v: any) => v.type === "array");
  assert.ok(object && array, `${path} takes one record or an array of them`);
  assert.deepEqual(array.items, object, "the array holds the same record");
  assert.equal(array.minItems, 1);
  return deref(object);
}

describe("the document", () => {
  test("is valid OpenAPI 3.1 according to @seriousme/openapi-schema-validator", async () => {
    const { Validator } = await import("@seriousme/openapi-schema-validator");
    assert.ok(Validator.supportedVersions.has("3.1"));
    const validator = new Validator();
    const result = await validator.validate(doc);
    assert.deepEqual(result, { valid: true }, JSON.stringify(result.errors, null, 2));
    assert.equal(validator.version, "3.1");
    assert.equal(doc.openapi, "3.1.0");
    assert.equal(typeof doc.info.version, "string");
  });

  test("every $ref resolves and every operationId is unique", () => {
    const refs: string[] = [];
    const walk = (node: unknown) => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === "object") {
        for (const [k, v] of Object.entries(node)) {
          if (k === "$ref" && typeof v === "string") refs.push(v);
          else walk(v);
        }
      }
    };
    walk(doc);
    assert.ok(refs.length > 20);
    for (const ref of refs) {
      assert.match(ref, /^#\/components\/schemas\/[A-Za-z0-9_]+$/);
      assert.ok(doc.components.schemas[ref.split("/").pop()!], `${ref} resolves`);
    }
    const ids: string[] = [];
    for (const item of Object.values<any>(doc.paths))
      for (const op of Object.values<any>(item)) if (op?.operationId) ids.push(op.operationId);
    assert.equal(new Set(ids).size, ids.length, `unique operationIds: ${ids.join(", ")}`);
  });

  test("documents every endpoint of docs/http-api.md and one canonical route per stream, with the stream's body formats", () => {
    for (const path of [
      "/v1/ingest/batch",
      "/events",
      "/ingest/message",
      "/ingest/batch",
      "/ingest/stream",
      "/v1/dead-letters/replay",
      "/v1/sources/{name}/run",
    ])
      assert.ok(doc.paths[path]?.post, `POST ${path}`);
    for (const path of [
      "/v1/batches/{batch_id}",
      "/v1/batch/{batch_id}/status",
      "/health",
      "/v1/health",
      "/metrics",
      "/v1/metrics",
      "/v1/latency",
      "/stats",
      "/v1/ws",
      "/v1/dead-letters",
      "/users",
      "/countries",
      "/v1/sources",
      ...streams.map((s) => `/v1/streams/${s.name}/records`),
    ]) {
      assert.ok(doc.paths[path]?.get, `GET ${path}`);
    }
    const contentTypes: Record<string, string> = { json: "application/json", ndjson: "application/x-ndjson", text: "text/plain" };
    for (const stream of streams) {
      const op = doc.paths[`/v1/streams/${stream.name}/events`]?.post;
      assert.ok(op, `POST /v1/streams/${stream.name}/events`);
      // JSON streams also take text/plain: what navigator.sendBeacon sends (docs/http-api.md#beacons).
      const expected = stream.formats.map((f) => contentTypes[f]);
      if (stream.formats.includes("json") && !stream.formats.includes("text")) expected.push("text/plain");
      assert.deepEqual(Object.keys(op.requestBody.content).sort(), expected.sort(), stream.name);
      for (const code of ["200", "202", "207", "400", "404", "413", "415", "422", "503"])
        assert.ok(op.responses[code], `${stream.name}: response ${code}`);
    }
    const status = deref(doc.paths["/v1/batches/{batch_id}"].get.responses["200"].content["application/json"].schema);
    assert.deepEqual(status.properties.status.enum, ["pending", "committed", "partial", "failed"]);
  });
});

describe("request schemas are the typia-generated record types", () => {
  test("events: event_id 1..128, service_name 1..50, event_type 1..100, payload object, timestamp date-time; unknown fields refused", () => {
    const s = recordSchema("/v1/streams/events/events");
    assert.equal(s.type, "object");
    assert.deepEqual(s.properties.event_id, { type: "string", minLength: 1, maxLength: 128 });
    assert.deepEqual(s.properties.service_name, { type: "string", minLength: 1, maxLength: 50 });
    assert.deepEqual(s.properties.event_type, { type: "string", minLength: 1, maxLength: 100 });
    assert.equal(s.properties.timestamp.type, "string");
    assert.equal(s.properties.timestamp.format, "date-time");
    assert.equal(deref(s.properties.payload).type, "object");
    assert.equal(deref(s.properties.metadata).type, "object");
    assert.deepEqual([...s.required].sort(), ["event_id", "event_type", "payload", "service_name"]);
    assert.equal(s.additionalProperties, false);
    // /v1/ingest/batch wraps the same record.
    const envelope = doc.paths["/v1/ingest/batch"].post.requestBody.content["application/json"].schema;
    assert.deepEqual(deref(envelope.properties.events.items), s);
    assert.deepEqual(envelope.properties.priority, { type: "integer", minimum: 0, maximum: 10 });
    assert.deepEqual(envelope.required, ["events"]);
  });

  test("logs: severity is one of the five levels, message at least 1 character", () => {
    const s = recordSchema("/v1/streams/logs/events");
    const severity = s.properties.severity;
    const values = severity.enum ?? severity.oneOf?.map((v: any) => v.const);
    assert.deepEqual([...values].sort(), ["CRITICAL", "DEBUG", "ERROR", "INFO", "WARN"]);
    assert.equal(s.properties.message.minLength, 1);
    assert.deepEqual([...s.required].sort(), ["message", "service_name", "severity"]);
  });

  test("product_events (POST /events and the canonical route): uuid id, integer epoch milliseconds", () => {
    const s = recordSchema("/events");
    assert.deepEqual(recordSchema("/v1/streams/product_events/events"), s);
    assert.deepEqual(s.properties.event_id, { type: "string", format: "uuid" });
    assert.equal(s.properties.event_time.type, "integer");
    assert.equal(s.properties.event_time.minimum, 0);
    assert.equal(s.properties.event_time.maximum, 253402300799999);
    assert.deepEqual([...s.required].sort(), ["event_id", "event_time", "event_type", "properties", "user_id"]);
  });

  test("TPC-H records: integer keys >= 1, exact decimals as patterned strings, dates, bounded text", () => {
    const order = deref(doc.components.schemas.OrderRecord);
    assert.deepEqual(deref(order.properties.o_orderkey), { ...deref(order.properties.o_orderkey), type: "integer", minimum: 1 });
    const decimal = deref(order.properties.o_totalprice);
    assert.equal(decimal.type, "string");
    assert.equal(decimal.pattern, "^-?[0-9]{1,13}(\\.[0-9]{1,2})?$");
    assert.deepEqual(deref(order.properties.o_orderdate), { type: "string", format: "date" });
    assert.equal(deref(order.properties.o_comment).maxLength, 79);
    const item = deref(doc.components.schemas.LineItemRecord);
    assert.equal(deref(item.properties.l_linenumber).minimum, 1);
    assert.equal(deref(item.properties.l_comment).maxLength, 44);
    assert.equal(deref(doc.components.schemas.CustomerRecord.properties.c_nationkey).minimum, 0);
    assert.equal(deref(doc.components.schemas.PartRecord.properties.p_comment).maxLength, 23);
  });
});

describe("the daemon accepts exactly what the document says", () => {
  interface Variant {
    label: string;
    record: Record<string, unknown>;
    /** null: must be accepted; else the field the refusal must name. */
    refusedAt: string | null;
  }

  /** Variants at and past every bound the schema states for a property, plus required fields and unknown fields. */
  function variants(schema: any, base: () => Record<string, unknown>): Variant[] {
    const out: Variant[] = [];
    const withValue = (field: string, value: unknown) => ({ ...base(), [field]: value });
    for (const [field, raw] of Object.entries<any>(schema.properties)) {
      const p = deref(raw);
      if (p.type === "string") {
        if (typeof p.maxLength === "number") {
          out.push({
            label: `${field} of maxLength ${p.maxLength}`,
            record: withValue(field, "m".repeat(p.maxLength - 8) + randomUUID().slice(0, 8)),
            refusedAt: null,
          });
          out.push({ label: `${field} of maxLength + 1`, record: withValue(field, "m".repeat(p.maxLength + 1)), refusedAt: field });
        }
        if (typeof p.minLength === "number") {
          if (p.minLength > 0)
            out.push({ label: `${field} shorter than minLength`, record: withValue(field, "m".repeat(p.minLength - 1)), refusedAt: field });
        }
        if (p.format === "uuid") out.push({ label: `${field} not a uuid`, record: withValue(field, "1234"), refusedAt: field });
        if (p.format === "date-time") {
          out.push({ label: `${field} date-time`, record: withValue(field, "2026-01-02T03:04:05Z"), refusedAt: null });
          out.push({ label: `${field} not a date-time`, record: withValue(field, "2026-01-02"), refusedAt: field });
        }
        out.push({ label: `${field} a number`, record: withValue(field, 5), refusedAt: field });
      } else if (p.type === "integer") {
        if (typeof p.minimum === "number") {
          out.push({ label: `${field} at minimum`, record: withValue(field, p.minimum), refusedAt: null });
          out.push({ label: `${field} below minimum`, record: withValue(field, p.minimum - 1), refusedAt: field });
        }
        if (typeof p.maximum === "number") {
          out.push({ label: `${field} at maximum`, record: withValue(field, p.maximum), refusedAt: null });
          out.push({ label: `${field} above maximum`, record: withValue(field, p.maximum + 1), refusedAt: field });
        }
        out.push({ label: `${field} not an integer`, record: withValue(field, 2.5), refusedAt: field });
      } else if (p.type === "object") {
        out.push({ label: `${field} an object`, record: withValue(field, { any: ["thing"] }), refusedAt: null });
        out.push({ label: `${field} a string`, record: withValue(field, "text"), refusedAt: field });
      } else if (p.oneOf?.every((v: any) => "const" in v)) {
        for (const v of p.oneOf) out.push({ label: `${field} = ${v.const}`, record: withValue(field, v.const), refusedAt: null });
        out.push({ label: `${field} another value`, record: withValue(field, "NOT_LISTED"), refusedAt: field });
      } else {
        assert.fail(`no variants for ${field}: ${JSON.stringify(p)}`);
      }
    }
    for (const field of schema.required) {
      const record = base();
      delete record[field];
      out.push({ label: `${field} missing`, record, refusedAt: field });
    }
    for (const field of Object.keys(schema.properties)) {
      if (schema.required.includes(field)) continue;
      const record = base();
      delete record[field];
      out.push({ label: `optional ${field} absent`, record, refusedAt: null });
    }
    if (schema.additionalProperties === false)
      out.push({ label: "an unknown field", record: { ...base(), not_in_the_type: 1 }, refusedAt: "not_in_the_type" });
    return out;
  }

  async function tryAll(stream: string, path: string, base: () => Record<string, unknown>) {
    const cases = variants(recordSchema(path), base);
    const res = await post(`${fx.daemon.base}${path}`, JSON.stringify(cases.map((c) => c.record)));
    assert.equal(res.status, 207, res.text);
    const byIndex = new Map<number, any[]>();
    for (const e of res.json.errors) byIndex.set(e.index, [...(byIndex.get(e.index) ?? []), e]);
    cases.forEach((c, i) => {
      const errors = byIndex.get(i) ?? [];
      if (c.refusedAt === null) assert.deepEqual(errors, [], `${stream}: ${c.label} is accepted`);
      else
        assert.ok(
          errors.some((e) => e.path === c.refusedAt),
          `${stream}: ${c.label} is refused naming ${c.refusedAt}: ${JSON.stringify(errors)}`,
        );
    });
    assert.equal(res.json.accepted, cases.filter((c) => c.refusedAt === null).length);
    assert.equal(res.json.rejected, cases.filter((c) => c.refusedAt !== null).length);
  }

  test("events", async () => {
    await tryAll("events", "/v1/streams/events/events", () => ({
      event_id: randomUUID(),
      service_name: "svc",
      event_type: "t",
      payload: {},
      timestamp: "2026-01-01T00:00:00Z",
      metadata: {},
    }));
  });

  test("logs", async () => {
    await tryAll("logs", "/v1/streams/logs/events", () => ({ service_name: "svc", severity: "INFO", message: "m", payload: {} }));
  });

  test("product_events", async () => {
    await tryAll("product_events", "/events", () => ({
      event_id: randomUUID(),
      user_id: "u",
      event_type: "t",
      event_time: 1767225600000,
      experiment_id: "e",
      variant: "v",
      properties: {},
    }));
  });
});

/**
 * Issue 6 item 8, fuzzing (docs/storage.md, Durability and failure: "Bad input gets a clear error and never takes the daemon down"): at
 * least 100,000 generated malformed bodies go through the same code the workers run, and a few thousand
 * more through the real daemon over HTTP and WebSocket. Bodies come from a seeded PRNG (mutated valid
 * bodies, type-confused records, random JSON, raw bytes and invalid UTF-8, broken TPC-H lines, deep
 * nesting); FAULTS_SEED=<seed printed at the start> replays a run.
 *
 * Layers, named honestly:
 * 1. In process, one body at a time, the worker's pipeline minus the database: decodeBody + parseBody
 *    (dist/workers/body-parser.js) → for each record, the TPC-H line parser where the body is lines, the
 *    stream's typia validator (dist/config/streams) and its COPY row encoder (compileRowEncoder), and the
 *    dead-letter row of every rejected record (deadLetterRow). Only the exceptions the worker expects may
 *    escape (UnparseableBody, LineFormatError, EncodeError): anything else would fail the task (a 500).
 *    Every encoded row must be exactly one COPY line with one field per column, whatever the input held,
 *    and every dead letter's errors must be JSON that jsonb accepts (no escaped NUL or lone surrogate: one
 *    such row fails the whole group-commit batch). No body may take long (a hang would show as a slow body).
 * 2. Over the network to one daemon: HTTP requests with fuzzed bodies on every ingest endpoint, and
 *    WebSocket frames on four streams. Every request gets a 2xx/4xx JSON answer (never 5xx, never a dropped
 *    connection), every frame its ack in order; the daemon stays healthy and still ingests a valid event.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { performance } from "node:perf_hooks";
import { streams } from "../config/streams";
import type { StreamDefinition } from "../src/shared/stream-definition";
import { LineFormatError } from "../src/shared/line-fields";
import { decodeBody, parseBody, UnparseableBody } from "../workers/records/body-parser";
import { deadLetterRow } from "../workers/commit/bookkeeping-rows";
import { validationErrors } from "../workers/records/record-errors";
import { compileRowEncoder, EncodeError } from "../workers/records/row-encoder";
import type { RecordError, TaskFormat } from "../src/shared/task-protocol";
import { useDaemon } from "./fixture";
import { event, openWs, post, type WsClient } from "./harness";
import { health, prng, testSeed } from "./faults-helpers";

/** A database and a daemon with default limits, killed (SIGKILL) in after(). */
const fx = useDaemon({ stopSignal: "SIGKILL" });
const clients: WsClient[] = [];
fx.teardown(() => {
  for (const c of clients) c.socket.terminate();
});

// ---------------------------------------------------------------------------------------------------------
// The generator.

type Kind = "events" | "logs" | "product_events" | "lines" | "envelope";

interface Body {
  kind: Kind;
  how: string;
  bytes: Buffer;
  /** The format the worker would parse it as. */
  format: TaskFormat;
}

const VALID_LINES = [
  "O|1|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|nstructions sleep furiously",
  "L|1|155190|7706|1|17|21168.23|0.04|0.02|N|O|1996-03-13|1996-02-12|1996-03-22|DELIVER IN PERSON|TRUCK|egular courts above the",
  "C|1|Customer#000000001|IVhzIApeRb|15|25-989-741-2988|711.56|BUILDING|to the even",
  "P|1|goldenrod lavender|Manufacturer#1|Brand#13|PROMO BURNISHED COPPER|7|JUMBO PKG|901.00|ly. slyly ironi",
];

const TOKENS = [
  "{",
  "}",
  "[",
  "]",
  '"',
  ",",
  ":",
  "\\",
  "\\u",
  "\\ud800",
  "\\u0000",
  "null",
  "true",
  "1e309",
  "-",
  "-0",
  "0x1F",
  "NaN",
  "\n",
  "\r\n",
  "\r",
  "\t",
  "|",
  "||",
  "\u0000",
  "\u2028",
  "\ud83d\ude00",
  "\ufeff",
  "/*",
  "'",
  "9".repeat(40),
  "{}",
  "[]",
];

const INVALID_UTF8 = [
  [0xff],
  [0xfe],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xe2, 0x82],
  [0x80],
  [0xf4, 0x90, 0x80, 0x80],
];

class Generator {
  private n = 0;
  constructor(readonly random: () => number) {}

  int(max: number): number {
    return Math.floor(this.random() * max);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  private id(): string {
    return `fz-${++this.n}-${this.int(1e9).toString(36)}`;
  }

  private uuid(): string {
    const h = () => this.int(16).toString(16);
    const part = (k: number) => Array.from({ length: k }, h).join("");
    return `${part(8)}-${part(4)}-4${part(3)}-a${part(3)}-${part(12)}`;
  }

  validRecord(kind: Exclude<Kind, "lines" | "envelope">): Record<string, unknown> {
    if (kind === "events") {
      const r = event(this.id()) as Record<string, unknown>;
      if (this.random() < 0.3) r.timestamp = new Date(this.int(4e12)).toISOString();
      if (this.random() < 0.3) r.metadata = { k: this.int(100) };
      return r;
    }
    if (kind === "logs")
      return {
        service_name: "svc",
        severity: this.pick(["INFO", "WARN", "ERROR", "DEBUG", "CRITICAL"]),
        message: `m ${this.id()}`,
        payload: { a: 1 },
      };
    return { event_id: this.uuid(), user_id: "u1", event_type: "view", event_time: this.int(2e12), properties: { p: this.int(9) } };
  }

  randomValue(depth: number): unknown {
    const r = this.random();
    if (depth <= 0 || r < 0.45) {
      return this.pick<() => unknown>([
        () => null,
        () => true,
        () => false,
        () => 0,
        () => -1,
        () => 1.5,
        () => 1e308,
        () => -1e-308,
        () => Number.MAX_SAFE_INTEGER + 2,
        () => "",
        () => "x".repeat(this.int(300)),
        () => "\u0000",
        () => "\ud800",
        () => "tab\there\nnew\\line",
        () => "é€😀",
        () => new Date(this.int(4e12)).toISOString(),
        () => "2024-13-45T99:99:99Z",
        () => this.uuid(),
        () => this.id(),
      ])();
    }
    if (r < 0.75) return Array.from({ length: this.int(5) }, () => this.randomValue(depth - 1));
    const o: Record<string, unknown> = {};
    const keys = [
      "event_id",
      "service_name",
      "event_type",
      "payload",
      "timestamp",
      "metadata",
      "severity",
      "message",
      "user_id",
      "event_time",
      "properties",
      "__proto__",
      "constructor",
      "",
      "k\u0000",
      "é",
    ];
    for (let i = this.int(6); i > 0; i--) o[this.pick(keys)] = this.randomValue(depth - 1);
    return o;
  }

  /** A valid record with one to three things wrong with it. */
  confusedRecord(kind: Exclude<Kind, "lines" | "envelope">): unknown {
    if (this.random() < 0.05) return this.randomValue(0);
    const r = this.validRecord(kind);
    const keys = Object.keys(r);
    for (let k = 1 + this.int(3); k > 0; k--) {
      const action = this.int(10); // deep nesting (3) is the costly one: kept to one in ten
      const key = this.pick(keys);
      if (action === 0) delete r[key];
      else if (action === 1) r[`unknown_${this.int(5)}`] = this.randomValue(1);
      else if (action === 2) r[key] = "y".repeat(this.pick([0, 51, 101, 129, 5000]));
      else if (action === 3) {
        let deep: unknown = 1;
        for (let d = this.pick([10, 100, 1000]); d > 0; d--) deep = this.random() < 0.5 ? [deep] : { d: deep };
        r[key] = deep;
      } else r[key] = this.randomValue(2);
    }
    return r;
  }

  private brokenLine(): string {
    if (this.random() < 0.5) return this.mutateText(this.pick(VALID_LINES), 1 + this.int(3));
    const fields = Array.from({ length: this.int(20) }, () =>
      this.pick(["", "1", "-5", "x", "1996-02-30", "99999999999999999", "1.234", "a|b", "\\", "\t", "é"]),
    );
    return [this.pick(["O", "L", "C", "P", "X", "", "o", "O "]), ...fields].join("|");
  }

  private mutateText(text: string, times: number): string {
    let s = text;
    for (let t = 0; t < times; t++) {
      const at = this.int(s.length + 1);
      const op = this.int(5);
      if (op === 0) s = s.slice(0, at) + this.pick(TOKENS) + s.slice(at);
      else if (op === 1) s = s.slice(0, at) + s.slice(at + 1 + this.int(8));
      else if (op === 2) s = s.slice(0, at);
      else if (op === 3) s = s.slice(0, at) + s.slice(Math.max(0, at - 10), at) + s.slice(at);
      else s = s.slice(0, at) + String.fromCharCode(this.int(0x80)) + s.slice(at + 1);
    }
    return s;
  }

  private mutateBytes(bytes: Buffer): Buffer {
    const out = Buffer.from(bytes);
    for (let i = 1 + this.int(3); i > 0 && out.length > 0; i--) out[this.int(out.length)] = this.int(256);
    if (this.random() < 0.5) {
      const at = this.int(out.length + 1);
      return Buffer.concat([out.subarray(0, at), Buffer.from(this.pick(INVALID_UTF8)), out.subarray(at)]);
    }
    return out;
  }

  private records(kind: Exclude<Kind, "lines" | "envelope">, count: number): unknown[] {
    return Array.from({ length: count }, () => (this.random() < 0.7 ? this.confusedRecord(kind) : this.validRecord(kind)));
  }

  body(): Body {
    const kind: Kind = this.pick(["events", "events", "logs", "product_events", "lines", "envelope"]);
    const style = this.int(10);
    if (kind === "lines") {
      const lines = Array.from({ length: 1 + this.int(6) }, () => (this.random() < 0.75 ? this.brokenLine() : this.pick(VALID_LINES)));
      let text = lines.join(this.pick(["\n", "\r\n", "\n\n"]));
      if (style === 0) return { kind, how: "line bytes", bytes: this.mutateBytes(Buffer.from(text)), format: "text" };
      if (style === 1) text = this.mutateText(text, 3);
      return { kind, how: "lines", bytes: Buffer.from(text), format: "text" };
    }
    if (kind === "envelope") {
      const env: Record<string, unknown> = { events: this.records("events", 1 + this.int(4)) };
      if (this.random() < 0.3) env.batch_id = this.pick(["", "b".repeat(200), 7, this.id()]);
      if (this.random() < 0.3) env.priority = this.pick([-1, 11, 2.5, "3", 5]);
      if (this.random() < 0.1) env.events = this.pick([[], {}, "x", null]);
      const text = style < 3 ? this.mutateText(JSON.stringify(env), 1 + this.int(4)) : JSON.stringify(env);
      return { kind, how: style < 3 ? "mutated envelope" : "envelope", bytes: Buffer.from(text), format: "json" };
    }
    const format: TaskFormat = this.pick(["json", "json", "ndjson", "auto"]);
    if (style === 0)
      return { kind, how: "random bytes", bytes: Buffer.from(Array.from({ length: this.int(300) }, () => this.int(256))), format };
    if (style === 1) {
      const depth = this.pick([50, 1000, 5000]);
      const open = this.pick(["[", '{"a":', '{"payload":']);
      const text = open.repeat(depth) + (this.random() < 0.5 ? "1" + (open === "[" ? "]" : "}").repeat(depth) : "");
      return { kind, how: "deep nesting", bytes: Buffer.from(text), format };
    }
    if (style === 2) return { kind, how: "random JSON", bytes: Buffer.from(JSON.stringify(this.randomValue(4)) ?? "null"), format };
    const records = this.records(kind, 1 + this.int(5));
    let text =
      format === "ndjson" || (format === "auto" && this.random() < 0.5)
        ? records.map((r) => JSON.stringify(r)).join("\n")
        : JSON.stringify(records.length === 1 && this.random() < 0.5 ? records[0] : records);
    if (style <= 5) text = this.mutateText(text, 1 + this.int(4));
    if (style === 6) return { kind, how: "record bytes", bytes: this.mutateBytes(Buffer.from(text)), format };
    return { kind, how: style <= 5 ? "mutated records" : "type-confused records", bytes: Buffer.from(text), format };
  }
}

// ---------------------------------------------------------------------------------------------------------
// The worker's pipeline, minus the database.

const byName = new Map(streams.map((s) => [s.name, s]));
const byPrefix = new Map(streams.filter((s) => s.linePrefix).map((s) => [s.linePrefix!, s]));
const encoders = new Map<StreamDefinition, ReturnType<typeof compileRowEncoder>>(streams.map((s) => [s, compileRowEncoder(s)]));
const ctx = { receivedAt: new Date().toISOString() };

interface Verdict {
  malformed: boolean;
  records: number;
  rows: number;
}

/** Throws only for what the worker would not survive as a clean 4xx / rejected record. */
function runPipeline(body: Body, problems: string[]): Verdict {
  let parsed: ReturnType<typeof parseBody>;
  try {
    parsed = parseBody(decodeBody(body.bytes), body.format, body.kind === "envelope");
  } catch (err) {
    if (!(err instanceof UnparseableBody)) problems.push(`${body.how}: parse threw ${(err as Error).name}: ${(err as Error).message}`);
    return { malformed: true, records: 0, rows: 0 };
  }
  let malformed = parsed.errors.length > 0;
  for (const e of parsed.errors) checkError(e, body, problems);
  let rows = 0;
  parsed.values.forEach((value, i) => {
    if (value === undefined) return;
    let stream: StreamDefinition | undefined =
      body.kind === "lines" ? undefined : byName.get(body.kind === "envelope" ? "events" : body.kind);
    let record: unknown = value;
    if (body.kind === "lines") {
      const text = value as string;
      const bar = text.indexOf("|");
      stream = bar > 0 ? byPrefix.get(text.slice(0, bar)) : undefined;
      if (!stream) {
        malformed = true;
        return;
      }
      try {
        record = stream.parseLine!(text);
      } catch (err) {
        if (!(err instanceof LineFormatError))
          problems.push(`${body.how}: parseLine threw ${(err as Error).name}: ${(err as Error).message}`);
        else checkError({ index: i, path: err.path, expected: err.expected, message: err.message }, body, problems);
        malformed = true;
        return;
      }
    }
    let checked: ReturnType<StreamDefinition["validate"]>;
    try {
      checked = stream!.validate(record);
    } catch (err) {
      problems.push(`${body.how}: validator of ${stream!.name} threw ${(err as Error).name}: ${(err as Error).message}`);
      malformed = true;
      return;
    }
    if (!checked.success) {
      malformed = true;
      for (const e of validationErrors(i, undefined, checked)) checkError(e, body, problems);
      return;
    }
    let row: string;
    try {
      row = encoders.get(stream!)!(checked.data, ctx);
    } catch (err) {
      if (!(err instanceof EncodeError))
        problems.push(`${body.how}: encoder of ${stream!.name} threw ${(err as Error).name}: ${(err as Error).message}`);
      else checkError({ index: i, path: err.path, expected: err.expected, message: err.message }, body, problems);
      malformed = true;
      return;
    }
    checkRow(row, stream!, body, problems);
    rows++;
  });
  return { malformed, records: parsed.values.length, rows };
}

/** An escaped NUL or an escaped unpaired surrogate (after an even number of backslashes): jsonb refuses both. */
const JSONB_REFUSES = /(?:^|[^\\])(?:\\\\)*\\u(?:0000|d[89ab][0-9a-f]{2}(?!\\ud[c-f])|d[c-f][0-9a-f]{2})/i;

function checkError(e: RecordError, body: Body, problems: string[]): void {
  if (
    typeof e.index !== "number" ||
    typeof e.path !== "string" ||
    typeof e.expected !== "string" ||
    typeof e.message !== "string" ||
    e.message.length === 0
  ) {
    problems.push(`${body.how}: malformed error ${JSON.stringify(e).slice(0, 200)}`);
    return;
  }
  // The dead letter the worker would write for it: its errors column is jsonb.
  const row = deadLetterRow({
    stream: "s",
    source: "fuzz",
    batchId: "b",
    index: e.index,
    line: e.line ?? null,
    raw: "",
    errors: [e],
    receivedAt: ctx.receivedAt,
  });
  const errorsColumn = row.split("\t")[6].replace(/\\\\/g, "\\");
  if (JSONB_REFUSES.test(errorsColumn)) problems.push(`${body.how}: dead letter errors jsonb would refuse: ${errorsColumn.slice(0, 300)}`);
}

/** One COPY text line: one newline at the end, no raw CR/LF inside, one tab between each pair of columns. */
function checkRow(row: string, stream: StreamDefinition, body: Body, problems: string[]): void {
  const inner = row.slice(0, -1);
  const tabs = inner.split("\t").length - 1;
  if (!row.endsWith("\n") || /[\n\r]/.test(inner) || tabs !== stream.columns.length - 1) {
    problems.push(
      `${body.how}: ${stream.name} row is not one COPY line of ${stream.columns.length} fields: ${JSON.stringify(row.slice(0, 200))}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------

const TARGET = 100_000;
const seed = testSeed("fuzz");

test(`at least ${TARGET.toLocaleString("en")} generated malformed bodies through the worker's parse → validate → encode code in process: only expected errors, well-formed COPY rows, no slow body`, {
  timeout: 180_000,
}, () => {
  const gen = new Generator(prng(seed));
  const problems: string[] = [];
  const byHow = new Map<string, number>();
  let total = 0;
  let malformed = 0;
  let records = 0;
  let rows = 0;
  let slowest = { ms: 0, how: "" };
  const started = performance.now();
  while (malformed < TARGET && total < TARGET * 2) {
    const body = gen.body();
    const t0 = performance.now();
    const v = runPipeline(body, problems);
    const ms = performance.now() - t0;
    if (ms > slowest.ms) slowest = { ms, how: `${body.how} (${body.bytes.length} B)` };
    total++;
    records += v.records;
    rows += v.rows;
    if (v.malformed) {
      malformed++;
      byHow.set(body.how, (byHow.get(body.how) ?? 0) + 1);
    }
    if (problems.length > 20) break;
  }
  const elapsed = performance.now() - started;
  console.log(
    `[faults] fuzz in process (seed ${seed}): ${total} bodies, ${malformed} malformed (${[...byHow].map(([k, v]) => `${k} ${v}`).join(", ")}), ` +
      `${records} records parsed, ${rows} COPY rows checked, in ${Math.round(elapsed)} ms; slowest body ${slowest.ms.toFixed(1)} ms (${slowest.how}); problems ${problems.length}`,
  );
  assert.deepEqual(problems.slice(0, 20), [], `seed ${seed}`);
  assert.ok(malformed >= TARGET, `${malformed} malformed bodies`);
  assert.ok(slowest.ms < 2000, `no body took long: ${slowest.ms} ms for ${slowest.how}`);
});

test("found by this fuzzing: WebSocket frames on a line-format stream are read as text lines (stored), and a JSON frame there is a rejected line, not a worker failure", async () => {
  const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=orders`);
  clients.push(c);
  c.send(
    "O|990001|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|fuzz ws line\nO|990002|100|O|1.00|1996-01-03|5-LOW|Clerk#000000951|0|second",
  );
  c.send('{"o_orderkey": 990003}');
  c.send("1");
  const [lines, json, number] = await c.waitForAcks(3);
  assert.equal(lines.accepted, 2, JSON.stringify(lines));
  for (const a of [json, number]) {
    assert.equal(a.accepted, 0);
    assert.equal(a.rejected, 1);
    assert.doesNotMatch(a.errors[0].message, /worker failed/, JSON.stringify(a));
  }
  const stored = await fx.db.query("SELECT o_orderkey::int AS k FROM orders WHERE o_orderkey >= 990001 ORDER BY 1");
  assert.deepEqual(
    stored.rows.map((r) => r.k),
    [990001, 990002],
  );
  c.socket.close();
});

test("found by this fuzzing: a rejected record whose error text holds a NUL or half a surrogate pair is a rejected record, not a 503 for its whole group-commit batch", async () => {
  const ok = () => post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event(`jsonb-ok-${Math.random()}`)]));
  const [line, cut, neighbour] = await Promise.all([
    // The line's prefix, NUL included, is quoted in its error message.
    post(
      `${fx.daemon.base}/ingest/batch`,
      "\u0000L|1|2\nC|990001|Customer#990001|addr|15|25-989-741-2988|711.56|BUILDING|fuzz",
      "text/plain",
    ),
    // The echoed value is cut at 80 characters, here between the two halves of an emoji.
    post(
      `${fx.daemon.base}/v1/streams/events/events`,
      JSON.stringify([
        { event_id: "jsonb-cut-1", service_name: "s", event_type: ["a".repeat(74) + "😀😀"], payload: {} },
        event("jsonb-cut-2"),
      ]),
    ),
    ok(),
  ]);
  assert.equal(line.status, 207, line.text);
  assert.equal(line.json.inserted, 1, line.text);
  assert.equal(cut.status, 207, cut.text);
  assert.equal(cut.json.accepted, 1);
  assert.equal(neighbour.status, 200, neighbour.text);
  const dead = await fx.db.query("SELECT count(*)::int AS n FROM ingest_dead_letters WHERE raw LIKE '%jsonb-cut-1%' OR raw LIKE '%L|1|2%'");
  assert.equal(dead.rows[0].n, 2, "both rejected records are kept as dead letters");
});

test("a few thousand fuzzed bodies over HTTP (every ingest endpoint) and WebSocket (4 streams) to the real daemon: every request answered 2xx/4xx, every frame acked in order, the daemon healthy after", {
  timeout: 180_000,
}, async () => {
  const netSeed = (seed ^ 0x5eed) >>> 0;
  const gen = new Generator(prng(netSeed));
  const routes: Record<Kind, Array<[path: string, contentType: string]>> = {
    events: [
      ["/v1/streams/events/events", "application/json"],
      ["/v1/streams/events/events", "application/x-ndjson"],
    ],
    logs: [
      ["/v1/streams/logs/events", "application/json"],
      ["/v1/streams/logs/events", "application/x-ndjson"],
    ],
    product_events: [
      ["/events", "application/json"],
      ["/v1/streams/product_events/events", "application/x-ndjson"],
    ],
    lines: [
      ["/ingest/batch", "text/plain"],
      ["/ingest/message", "text/plain"],
      [`/v1/streams/orders/events`, "text/plain"],
    ],
    envelope: [["/v1/ingest/batch", "application/json"]],
  };
  const HTTP_BODIES = 2000;
  const statuses: Record<string, number> = {};
  const unexpected: string[] = [];
  let next = 0;
  let ndjsonLines = 0;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < HTTP_BODIES) {
        next++;
        const body = gen.body();
        const [path, contentType] = gen.pick(routes[body.kind]);
        if (contentType === "application/x-ndjson") ndjsonLines += body.bytes.toString("latin1").split("\n").length;
        try {
          const res = await post(
            `${fx.daemon.base}${path}`,
            body.bytes,
            gen.random() < 0.05 ? gen.pick(["image/png", "", "application/json; charset=latin1"]) : contentType,
          );
          statuses[res.status] = (statuses[res.status] ?? 0) + 1;
          if (![200, 207, 400, 415, 422].includes(res.status) || res.json === undefined)
            unexpected.push(`${path} ${res.status}: ${res.text.slice(0, 200)} ← ${body.how}`);
        } catch (err) {
          unexpected.push(`${path}: ${(err as Error).message} ← ${body.how}`);
        }
      }
    }),
  );
  const httpMs = Date.now() - t0;

  const FRAMES = 500;
  const wsStreams = ["events", "logs", "product_events", "orders"];
  const kindOf: Record<string, Kind> = { events: "events", logs: "logs", product_events: "product_events", orders: "lines" };
  const t1 = Date.now();
  const acked = await Promise.all(
    wsStreams.map(async (stream) => {
      const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=${stream}`);
      clients.push(c);
      const window: number = c.hello.window;
      let sent = 0;
      while (sent < FRAMES) {
        while (sent < FRAMES && sent - c.acks.length < window) {
          let body = gen.body();
          while (body.kind !== kindOf[stream] && gen.random() < 0.8) body = gen.body();
          c.send(body.bytes);
          sent++;
        }
        await c.waitForAcks(sent - window + 1, 30_000);
      }
      const acks = await c.waitForAcks(FRAMES, 30_000);
      acks.forEach((a, i) => {
        if (a.type !== "ack" || a.seq !== i + 1 || typeof a.accepted !== "number" || typeof a.rejected !== "number")
          unexpected.push(`${stream} ack ${i + 1}: ${JSON.stringify(a).slice(0, 200)}`);
        if (a.errors.some((e: any) => /worker failed|cannot read body/.test(e.message)))
          unexpected.push(`${stream} ack ${a.seq}: ${JSON.stringify(a.errors[0])}`);
      });
      assert.equal(c.socket.readyState, c.socket.OPEN, `${stream}: connection still open`);
      c.socket.close();
      return acks.length;
    }),
  );
  const wsMs = Date.now() - t1;
  console.log(
    `[faults] fuzz over the network (seed ${netSeed}): ${HTTP_BODIES} HTTP bodies (${ndjsonLines} NDJSON lines among them) in ${httpMs} ms, statuses ${JSON.stringify(statuses)}; ` +
      `${acked.reduce((a, b) => a + b, 0)} WebSocket frames on ${wsStreams.join(", ")} acked in order in ${wsMs} ms; unexpected ${unexpected.length}`,
  );
  assert.deepEqual(unexpected.slice(0, 20), []);

  assert.equal(fx.daemon.child.exitCode, null, "the daemon is alive");
  const h = await health(fx.daemon.base);
  assert.equal(h.status, 200);
  assert.equal(h.json.ring.used_bytes, 0);
  const ok = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("fuzz-after-1")));
  assert.equal(ok.status, 200, ok.text);
  const row = await fx.db.query("SELECT count(*)::int AS n FROM events WHERE event_id = 'fuzz-after-1'");
  assert.equal(row.rows[0].n, 1);
  assert.deepEqual(
    fx.daemon.output.filter((l) => /"level":"?(60|50|fatal|error)"?/.test(l)).slice(0, 5),
    [],
    "nothing logged at error or fatal",
  );
});

/**
 * Hostile and broken input (docs/storage.md, Durability and failure): each body gets a clear 4xx (never a 5xx, never a crash), nothing of
 * it is stored unless it is valid, and the daemon keeps serving afterwards.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, get, openWs, post, rawRequest, waitFor, type WsClient } from "./harness";

/** A database and a daemon with default limits (MAX_BODY_MB=16). */
const fx = useDaemon();
const sockets: net.Socket[] = [];
const clients: WsClient[] = [];
fx.teardown(() => {
  for (const s of sockets) s.destroy();
  for (const c of clients) c.socket.terminate();
});

const url = () => `${fx.daemon.base}/v1/streams/events/events`;

async function idsWithPrefix(prefix: string): Promise<string[]> {
  const res = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

/** `{"a": {"a": … 1 …}}` nested `depth` objects deep. */
function nestedObject(depth: number): string {
  return '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
}

function rawRecord(id: string, payloadJson: string): string {
  return `{"event_id":"${id}","service_name":"svc","event_type":"deep","payload":${payloadJson}}`;
}

describe("unreadable bodies → 400", () => {
  test("truncated JSON → 400 malformed_body; nothing lands", async () => {
    const full = JSON.stringify([event("trunc-1"), event("trunc-2")]);
    for (const cut of [1, 15, full.length - 1]) {
      const res = await post(url(), full.slice(0, cut));
      assert.equal(res.status, 400, `cut at ${cut}: ${res.text}`);
      assert.equal(res.json.error, "malformed_body");
    }
    assert.deepEqual(await idsWithPrefix("trunc-"), []);
  });

  test("NDJSON whose last line is truncated → 207; the complete lines land", async () => {
    const body = `${JSON.stringify(event("ndtrunc-1"))}\n${JSON.stringify(event("ndtrunc-2")).slice(0, 20)}`;
    const res = await post(url(), body, "application/x-ndjson");
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.errors[0].line, 2);
    assert.deepEqual(await idsWithPrefix("ndtrunc-"), ["ndtrunc-1"]);
  });

  test("invalid UTF-8 bytes → 400 naming UTF-8, also inside an otherwise valid record", async () => {
    const bodies = [
      Buffer.from([0x7b, 0xff, 0xfe, 0x7d]),
      Buffer.concat([
        Buffer.from('{"event_id":"utf8-1'),
        Buffer.from([0xff]),
        Buffer.from('","service_name":"a","event_type":"b","payload":{}}'),
      ]),
      // A UTF-16 surrogate encoded as UTF-8 (CESU-8) is not valid UTF-8 either.
      Buffer.concat([
        Buffer.from('{"event_id":"utf8-2'),
        Buffer.from([0xed, 0xa0, 0x80]),
        Buffer.from('","service_name":"a","event_type":"b","payload":{}}'),
      ]),
    ];
    for (const body of bodies) {
      const res = await post(url(), body);
      assert.equal(res.status, 400, res.text);
      assert.match(res.json.message, /UTF-8/);
    }
    assert.deepEqual(await idsWithPrefix("utf8-"), []);
  });

  test("a UTF-8 byte-order mark before valid JSON is tolerated", async () => {
    const res = await post(url(), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(event("bom-1")))]));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(await idsWithPrefix("bom-"), ["bom-1"]);
  });

  test("empty and whitespace-only bodies → 400", async () => {
    const empty = await post(url(), "");
    assert.equal(empty.status, 400, empty.text);
    const blank = await post(url(), " \n\t ");
    assert.equal(blank.status, 400, blank.text);
    const ndBlank = await post(url(), "\n\n", "application/x-ndjson");
    assert.equal(ndBlank.status, 400, ndBlank.text);
  });

  test("a Content-Length shorter than the body → the cut body is answered 400, no crash", async () => {
    const body = JSON.stringify(event("short-len-1"));
    const res = await rawRequest(
      fx.daemon.port,
      `POST /v1/streams/events/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n`,
      body,
    );
    assert.equal(res.status, 400, res.head);
    assert.deepEqual(await idsWithPrefix("short-len-"), []);
  });
});

describe("wrong shapes and types → 415 / 422", () => {
  test("wrong content type → 415", async () => {
    const res = await post(url(), JSON.stringify(event("ctype-1")), "image/png");
    assert.equal(res.status, 415, res.text);
    assert.deepEqual(await idsWithPrefix("ctype-"), []);
  });

  test("JSON values that are not records (null, 42, a string, true) → 422 at path $", async () => {
    for (const body of ["null", "42", '"event"', "true"]) {
      const res = await post(url(), body);
      assert.equal(res.status, 422, `${body}: ${res.text}`);
      assert.equal(res.json.errors[0].path, "$");
    }
  });

  test("10,000-deep [[[…]]] and {…} bodies → 422, nothing lands", async () => {
    for (const body of ["[".repeat(10_000) + "]".repeat(10_000), nestedObject(10_000)]) {
      const res = await post(url(), body);
      assert.equal(res.status, 422, res.text.slice(0, 300));
      assert.equal(res.json.accepted, 0);
      assert.equal(res.json.rejected, 1);
      assert.ok(res.json.errors.every((e: any) => e.index === 0));
    }
  });

  test("a record whose payload is nested 10,000 deep is stored intact", async () => {
    const res = await post(url(), rawRecord("deep10k-1", nestedObject(10_000)));
    assert.equal(res.status, 200, res.text);
    const row = await fx.db.query("SELECT length(payload::text) AS n FROM events WHERE event_id = 'deep10k-1'");
    // PostgreSQL prints each level as `{"a": ` + `}`: 7 characters, plus the innermost 1.
    assert.equal(row.rows[0]?.n, 10_000 * 7 + 1);
  });

  test("a payload nested 100,000 deep is refused for that record alone (422 at path payload)", async () => {
    const res = await post(url(), `[${rawRecord("deep100k-1", nestedObject(100_000))},${JSON.stringify(event("deep100k-2"))}]`);
    assert.equal(res.status, 207, res.text.slice(0, 300));
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.index, e.path]),
      [[0, "payload"]],
    );
    assert.deepEqual(await idsWithPrefix("deep100k-"), ["deep100k-2"]);
  });

  test("NUL (\\u0000) in a text field or in the payload → the record is rejected naming the field", async () => {
    const records = [
      event("nul-1", { service_name: "a\u0000b" }),
      event("nul-2", { payload: { s: "x\u0000y" } }),
      event("nul-3", { payload: { "k\u0000": 1 } }),
      event("nul-ok"),
    ];
    const res = await post(url(), JSON.stringify(records));
    assert.equal(res.status, 207, res.text);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.index, e.path]),
      [
        [0, "service_name"],
        [1, "payload"],
        [2, "payload"],
      ],
    );
    assert.deepEqual(await idsWithPrefix("nul-"), ["nul-ok"]);
  });

  test('a lone surrogate "\\ud800" → that record is rejected, its neighbour lands', async () => {
    // JSON.stringify writes a lone surrogate as the escape \ud800, which is what a producer would send.
    const res = await post(url(), JSON.stringify([event("lone-1", { payload: { s: "\ud800" } }), event("lone-ok")]));
    assert.equal(res.status, 207, res.text);
    assert.deepEqual(
      res.json.errors.map((e: any) => e.index),
      [0],
    );
    const inId = await post(url(), JSON.stringify(event("lone-2\udc00")));
    assert.equal(inId.status, 422, inId.text);
    assert.equal(inId.json.errors[0].path, "event_id");
    assert.deepEqual(await idsWithPrefix("lone-"), ["lone-ok"]);
  });

  test("100,000 invalid records → 422 with a bounded error list", async () => {
    const res = await post(url(), JSON.stringify(Array.from({ length: 100_000 }, (_, i) => ({ event_id: `many-${i}` }))));
    assert.equal(res.status, 422, res.text.slice(0, 300));
    assert.equal(res.json.rejected, 100_000);
    assert.ok(res.json.errors.length <= 1000, `errors: ${res.json.errors.length}`);
    assert.equal(res.json.errors_truncated, true);
    assert.deepEqual(await idsWithPrefix("many-"), []);
  });

  test("a 1 MiB service_name → 422 with a short message (the value is not echoed whole)", async () => {
    const res = await post(url(), JSON.stringify(event("longval-1", { service_name: "s".repeat(1024 * 1024) })));
    assert.equal(res.status, 422);
    assert.equal(res.json.errors[0].path, "service_name");
    assert.ok(res.text.length < 4096, `answer of ${res.text.length} bytes`);
  });
});

describe("huge bodies", () => {
  const fifty = () => JSON.stringify(event("huge50-1", { payload: { s: "x".repeat(50 * 1024 * 1024) } }));

  test("a 50 MB string with the default MAX_BODY_MB=16 → 413 the producer can read; the connection stays usable", async () => {
    const res = await post(url(), fifty());
    assert.equal(res.status, 413, res.text);
    assert.equal(res.json.error, "body_too_large");
    const next = await post(url(), JSON.stringify(event("huge50-after")));
    assert.equal(next.status, 200, next.text);
    assert.deepEqual(await idsWithPrefix("huge50-"), ["huge50-after"]);
  });

  test("a 50 MB string with MAX_BODY_MB=64 / RING_MB=128 gets a clear answer and the daemon survives", async () => {
    const big = await fx.startDaemon({ env: { MAX_BODY_MB: "64", RING_MB: "128" } });
    const res = await post(`${big.base}/v1/streams/events/events`, fifty());
    assert.ok(res.status >= 200 && res.status < 500, `status ${res.status}: ${res.text.slice(0, 300)}`);
    const stored = await fx.db.query("SELECT length(payload->>'s') AS n FROM events WHERE event_id = 'huge50-1'");
    if (res.status === 200) assert.equal(stored.rows[0]?.n, 50 * 1024 * 1024);
    else assert.equal(stored.rows.length, 0);
    const health = await get(`${big.base}/health`);
    assert.equal(health.status, 200);
    assert.equal(health.json.ring.used_bytes, 0, "the ring region was freed");
  });
});

describe("slow and stalled clients", () => {
  test("a body trickled in small pieces is read and stored", async () => {
    const body = JSON.stringify(event("slow-1"));
    const socket = net.connect(fx.daemon.port, "127.0.0.1");
    sockets.push(socket);
    let answer = "";
    socket.setEncoding("utf8");
    socket.on("data", (c: string) => (answer += c));
    await new Promise((r) => socket.once("connect", r));
    socket.write(
      `POST /v1/streams/events/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
    );
    for (let at = 0; at < body.length; at += 16) {
      socket.write(body.slice(at, at + 16));
      await new Promise((r) => setTimeout(r, 20));
    }
    await waitFor("the answer", () => /\r\n\r\n\{.*\}$/s.test(answer), 10_000);
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.deepEqual(await idsWithPrefix("slow-"), ["slow-1"]);
    socket.destroy();
  });

  test("a stalled body does not hold up other producers, and its ring space is freed when it goes", async () => {
    const socket = net.connect(fx.daemon.port, "127.0.0.1");
    sockets.push(socket);
    await new Promise((r) => socket.once("connect", r));
    socket.write(
      `POST /v1/streams/events/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{"event_id":"stalled-1"`,
    );
    await waitFor(
      "the stalled body to hold ring space",
      async () => (await get(`${fx.daemon.base}/health`)).json.ring.used_bytes > 0,
      5000,
    );

    const other = await post(url(), JSON.stringify(event("stalled-other")));
    assert.equal(other.status, 200, other.text);

    socket.destroy();
    await waitFor("ring space back", async () => (await get(`${fx.daemon.base}/health`)).json.ring.used_bytes === 0, 5000);
    assert.deepEqual(await idsWithPrefix("stalled-"), ["stalled-other"]);
  });
});

describe("WebSocket frames", () => {
  test("hostile frames (deep nesting, NUL, lone surrogate, non-records) are acked as rejected; the socket stays open", async () => {
    const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    clients.push(c);
    c.send(rawRecord("wsh-1", nestedObject(100_000)));
    c.send(JSON.stringify(event("wsh-2", { payload: { s: "\u0000" } })));
    c.send(JSON.stringify(event("wsh-3", { payload: { s: "\ud800" } })));
    c.send("[".repeat(10_000) + "]".repeat(10_000));
    c.send("null");
    c.send(JSON.stringify(event("wsh-ok")));
    const acks = await c.waitForAcks(6, 20_000);
    assert.deepEqual(
      acks.map((a) => a.seq),
      [1, 2, 3, 4, 5, 6],
    );
    for (const a of acks.slice(0, 5)) {
      assert.equal(a.accepted, 0, JSON.stringify(a).slice(0, 300));
      assert.ok(a.rejected >= 1);
    }
    assert.equal(acks[5].accepted, 1);
    assert.deepEqual(await idsWithPrefix("wsh-"), ["wsh-ok"]);
    c.socket.close();
  });
});

describe("after all of it", () => {
  test("the daemon is alive, healthy, logged nothing fatal, and ingests a valid event", async () => {
    assert.equal(fx.daemon.child.exitCode, null, "the daemon is still running");
    const health = await get(`${fx.daemon.base}/health`);
    assert.equal(health.status, 200, health.text);
    assert.equal(health.json.status, "healthy");
    const res = await post(url(), JSON.stringify(event("survivor-1")));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(await idsWithPrefix("survivor-"), ["survivor-1"]);
    const fatal = fx.daemon.output.filter((line) => /"level":60/.test(line));
    assert.deepEqual(fatal, []);
    const metrics = await get(`${fx.daemon.base}/metrics`);
    assert.doesNotMatch(metrics.text, /ingestd_http_requests_total\{[^}]*status="5\d\d"/, "no 5xx was ever answered");
  });
});

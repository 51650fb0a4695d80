/**
 * WebSocket stream protocol (docs/websocket-protocol.md) against the real daemon and PostgreSQL: hello, per-frame acks in seq
 * order after commit, unparseable frames, and the two limits that close the connection (frame size, window).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, openWs, type Daemon, type WsClient } from "./harness";

const WINDOW = 12;
const MAX_FRAME = 262_144;

/** A database, and a daemon with roomy limits, set explicitly so the hello can be checked against them. */
const fx = useDaemon({ env: { WS_WINDOW: String(WINDOW), WS_MAX_FRAME_BYTES: String(MAX_FRAME) } });
/** A second daemon on the same database with tight limits: window 2, frames up to 64 KiB. */
let tight: Daemon;
fx.setup(async () => {
  tight = await fx.startDaemon({ env: { WS_WINDOW: "2", WS_MAX_FRAME_BYTES: "65536" } });
});
const clients: WsClient[] = [];
fx.teardown(() => {
  for (const c of clients) c.socket.terminate();
});

async function connect(d: Daemon, stream = "events"): Promise<WsClient> {
  const c = await openWs(`${d.wsBase}/v1/ws?stream=${stream}`);
  clients.push(c);
  return c;
}

async function idsWithPrefix(prefix: string): Promise<string[]> {
  const res = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

function assertAckShape(ack: any): void {
  assert.equal(ack.type, "ack");
  assert.equal(typeof ack.seq, "number");
  assert.equal(typeof ack.accepted, "number");
  assert.equal(typeof ack.rejected, "number");
  assert.equal(typeof ack.duplicates, "number");
  assert.ok(Array.isArray(ack.errors));
}

describe("GET /v1/ws?stream=…", () => {
  test("on open the server says hello with stream, window and max_frame_bytes", async () => {
    const c = await connect(fx.daemon);
    assert.deepEqual(c.hello, { type: "hello", stream: "events", window: WINDOW, max_frame_bytes: MAX_FRAME });
    const t = await connect(tight);
    assert.equal(t.hello.window, 2);
    assert.equal(t.hello.max_frame_bytes, 65536);
    c.socket.close();
    t.socket.close();
  });

  test("an unknown stream is refused at the upgrade (404), and so is a missing one", async () => {
    await assert.rejects(openWs(`${fx.daemon.wsBase}/v1/ws?stream=nope`), (err: any) => err.status === 404);
    await assert.rejects(openWs(`${fx.daemon.wsBase}/v1/ws`), (err: any) => err.status === 404);
  });
});

describe("frames and acks", () => {
  test("pipelined frames (object, array, NDJSON, binary) are acked in seq order with the committed counts", async () => {
    const c = await connect(fx.daemon);
    const frames: Array<{ data: string | Buffer; ids: string[] }> = [];
    for (let f = 0; f < 10; f++) {
      const ids = Array.from({ length: f + 1 }, (_, i) => `seq-${String(f).padStart(2, "0")}-${String(i).padStart(2, "0")}`);
      const records = ids.map((id) => event(id));
      let data: string | Buffer;
      if (ids.length === 1) data = JSON.stringify(records[0]);
      else if (f % 3 === 0) data = records.map((r) => JSON.stringify(r)).join("\n");
      else if (f % 3 === 1) data = Buffer.from(JSON.stringify(records));
      else data = JSON.stringify(records);
      frames.push({ data, ids });
    }
    assert.ok(frames.length <= WINDOW);
    for (const f of frames) c.send(f.data);
    const acks = await c.waitForAcks(frames.length);
    acks.forEach(assertAckShape);
    assert.deepEqual(
      acks.map((a) => a.seq),
      frames.map((_, i) => i + 1),
    );
    assert.deepEqual(
      acks.map((a) => a.accepted),
      frames.map((f) => f.ids.length),
    );
    assert.ok(acks.every((a) => a.rejected === 0 && a.errors.length === 0));
    // Acked means committed: the rows are there the moment the ack is.
    assert.deepEqual(await idsWithPrefix("seq-"), frames.flatMap((f) => f.ids).sort());
    c.socket.close();
  });

  test("acks stay in seq order when a big first frame commits after small later ones", async () => {
    const c = await connect(fx.daemon);
    const big = Array.from({ length: 1500 }, (_, i) =>
      event(`order-a-${String(i).padStart(4, "0")}`, { payload: { pad: "p".repeat(40) } }),
    );
    const bigFrame = JSON.stringify(big);
    assert.ok(bigFrame.length < MAX_FRAME);
    c.send(bigFrame);
    for (let f = 0; f < 6; f++) c.send(JSON.stringify(event(`order-b-${f}`)));
    const acks = await c.waitForAcks(7, 20_000);
    assert.deepEqual(
      acks.map((a) => a.seq),
      [1, 2, 3, 4, 5, 6, 7],
    );
    assert.deepEqual(
      acks.map((a) => a.accepted),
      [1500, 1, 1, 1, 1, 1, 1],
    );
    assert.equal((await idsWithPrefix("order-")).length, 1506);
    c.socket.close();
  });

  test("a frame with invalid records is acked with counts and field paths; only its valid records land", async () => {
    const c = await connect(fx.daemon);
    c.send(JSON.stringify([event("part-0"), { event_id: "part-1", service_name: "svc", payload: {} }, event("part-2", { extra: true })]));
    const [ack] = await c.waitForAcks(1);
    assert.equal(ack.seq, 1);
    assert.equal(ack.accepted, 1);
    assert.equal(ack.rejected, 2);
    assert.deepEqual(
      ack.errors.map((e: any) => [e.index, e.path]),
      [
        [1, "event_type"],
        [2, "extra"],
      ],
    );
    assert.deepEqual(await idsWithPrefix("part-"), ["part-0"]);
    c.socket.close();
  });

  test("an unparseable frame is acked as rejected and the connection stays open for the next frame", async () => {
    const c = await connect(fx.daemon);
    c.send('{"event_id": "garbage-0", "service_name": ');
    const [bad] = await c.waitForAcks(1);
    assertAckShape(bad);
    assert.equal(bad.seq, 1);
    assert.equal(bad.accepted, 0);
    assert.ok(bad.rejected >= 1);
    assert.ok(bad.errors.length >= 1);
    c.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])); // invalid UTF-8 in a binary frame
    c.send(""); // an empty frame
    c.send(JSON.stringify(event("garbage-ok")));
    const acks = await c.waitForAcks(4);
    assert.deepEqual(
      acks.map((a) => a.seq),
      [1, 2, 3, 4],
    );
    assert.equal(acks[1].accepted, 0);
    assert.ok(acks[1].rejected >= 1);
    assert.equal(acks[2].accepted, 0);
    assert.ok(acks[2].rejected >= 1);
    assert.equal(acks[3].accepted, 1);
    assert.equal(acks[3].rejected, 0);
    assert.equal(c.socket.readyState, c.socket.OPEN);
    assert.deepEqual(await idsWithPrefix("garbage-"), ["garbage-ok"]);
    c.socket.close();
  });
});

describe("limits", () => {
  test("a frame over max_frame_bytes closes the connection with 1009 and stores nothing", async () => {
    const c = await connect(tight);
    const record = event("huge-1", { payload: { s: "" } });
    const base = JSON.stringify(record).length;
    const frame = JSON.stringify(event("huge-1", { payload: { s: "z".repeat(65537 - base) } }));
    assert.equal(Buffer.byteLength(frame), 65537);
    c.send(frame);
    const { code } = await c.closed;
    assert.equal(code, 1009);
    assert.deepEqual(c.acks, []);
    assert.deepEqual(await idsWithPrefix("huge-"), []);
  });

  test("a frame of exactly max_frame_bytes is accepted", async () => {
    const c = await connect(tight);
    const base = JSON.stringify(event("edge-1", { payload: { s: "" } })).length;
    const frame = JSON.stringify(event("edge-1", { payload: { s: "e".repeat(65536 - base) } }));
    assert.equal(Buffer.byteLength(frame), 65536);
    c.send(frame);
    const [ack] = await c.waitForAcks(1);
    assert.equal(ack.accepted, 1);
    assert.deepEqual(await idsWithPrefix("edge-"), ["edge-1"]);
    c.socket.close();
  });

  test("a producer that keeps within the window gets every frame acked", async () => {
    const c = await connect(tight);
    const total = 20;
    let sent = 0;
    // Never more than `window` (2) frames unacknowledged.
    while (sent < total) {
      while (sent < total && sent - c.acks.length < 2) c.send(JSON.stringify(event(`win-${String(sent++).padStart(2, "0")}`)));
      await c.waitForAcks(sent - 1);
    }
    const acks = await c.waitForAcks(total);
    assert.deepEqual(
      acks.map((a) => a.seq),
      Array.from({ length: total }, (_, i) => i + 1),
    );
    assert.equal((await idsWithPrefix("win-")).length, total);
    c.socket.close();
  });

  test("exceeding the window (50 frames in one tick, window 2) closes with 1008", async () => {
    const c = await connect(tight);
    for (let i = 0; i < 50; i++) c.send(JSON.stringify(event(`flood-${i}`)));
    const { code } = await c.closed;
    assert.equal(code, 1008);
    // The violation is caught before frame 3 is taken: no ack can exceed the window.
    assert.ok(c.acks.length <= 2, `acks: ${c.acks.length}`);
    const landed = await idsWithPrefix("flood-");
    assert.ok(landed.length <= 2, `at most the window's frames were stored, got ${landed.length}`);
  });

  test("after those closes the daemon still accepts new connections and frames", async () => {
    const c = await connect(tight);
    c.send(JSON.stringify(event("after-limits")));
    const [ack] = await c.waitForAcks(1);
    assert.equal(ack.accepted, 1);
    assert.deepEqual(await idsWithPrefix("after-limits"), ["after-limits"]);
    c.socket.close();
  });
});

/**
 * Issue 6 item 8, hostile producers at the connection level (docs/storage.md, Durability and failure: "slow or stalled clients"; docs/http-api.md limits).
 * test/hostile-bodies.test.ts covers hostile *bodies* (truncated JSON, bad UTF-8, nesting, huge values) and
 * a stalled body the client itself abandons; test/ws-protocol.test.ts covers one oversized frame (1009) and
 * one window violation (1008). This file covers what the server must do on its own:
 *
 * - slowloris (headers dribbled) and stalled / dribbled bodies are timed out by the server (uWS closes an
 *   HTTP connection that is idle or below its minimum receive rate after ~10 s), and the ring space their
 *   Content-Length reserved comes back; while they hold the ring, other producers get 503, not a hang;
 * - a WebSocket producer that never reads its acks is cut off at the 1 MiB outbound cap, and several of
 *   them do not grow the daemon's memory;
 * - frames far over max_frame_bytes, floods of tiny frames within the window (each acked, rejected, in
 *   order) and past it (1008) from many connections at once;
 * - malformed upgrade requests, sent over raw sockets, are refused (never 101).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { describe, test } from "node:test";
import WebSocket from "ws";
import { useDaemon } from "./fixture";
import { event, openWs, post, type Daemon, type WsClient } from "./harness";
import { health, metric, metricSum, mib, MiB, rssBytes, sampleRss, sleep, until } from "./faults-helpers";

const MAX_FRAME = 65_536;

/** A database, and a daemon with default limits except 64 KiB frames; daemons are killed (SIGKILL) in after(). */
const fx = useDaemon({ env: { WS_MAX_FRAME_BYTES: String(MAX_FRAME) }, stopSignal: "SIGKILL" });
/**
 * A second daemon on the same database: a 2 MiB ring (one 1.75 MiB shard and the 256 KiB reserve for priority
 * above 0), 1 MiB bodies, a 1.5 s overload deadline.
 */
let small: Daemon;
fx.setup(async () => {
  small = await fx.startDaemon({ env: { RING_MB: "2", MAX_BODY_MB: "1", OVERLOAD_DEADLINE_MS: "1500" } });
});
const sockets: net.Socket[] = [];
const clients: Array<WsClient | WebSocket> = [];
fx.teardown(() => {
  for (const s of sockets) s.destroy();
  for (const c of clients) ("socket" in c ? c.socket : c).terminate();
});

async function idsWithPrefix(prefix: string): Promise<string[]> {
  const res = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

interface RawSession {
  socket: net.Socket;
  /** Everything the server sent (latin1). */
  received(): string;
  /** Resolves with ms from connect to the server closing the connection. */
  closed: Promise<number>;
  stop(): void;
}

/**
 * A raw TCP session: writes `initial`, then `drip` every `everyMs` for as long as the connection is open
 * (or `drips` times). The server closing it ends the session.
 */
function rawSession(port: number, initial: string | Buffer, drip?: { chunk: string; everyMs: number; drips?: number }): RawSession {
  const socket = net.connect(port, "127.0.0.1");
  sockets.push(socket);
  const chunks: Buffer[] = [];
  let timer: NodeJS.Timeout | undefined;
  const start = Date.now();
  const closed = new Promise<number>((resolve) => socket.on("close", () => resolve(Date.now() - start)));
  socket.on("data", (c) => chunks.push(c));
  socket.on("error", () => undefined);
  socket.on("close", () => clearInterval(timer));
  socket.on("connect", () => {
    socket.write(initial);
    if (drip) {
      let n = 0;
      timer = setInterval(() => {
        if (drip.drips !== undefined && n++ >= drip.drips) return clearInterval(timer);
        if (!socket.destroyed) socket.write(drip.chunk);
      }, drip.everyMs);
    }
  });
  return {
    socket,
    received: () => Buffer.concat(chunks).toString("latin1"),
    closed,
    stop() {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

/** Resolves with the value, or with `fallback` after `ms`. */
function within<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<F>((r) => (timer = setTimeout(() => r(fallback), ms)))]).finally(() => clearTimeout(timer));
}

const INGEST_HEAD = "POST /v1/streams/events/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";

describe("slow and stalled HTTP producers", () => {
  test("slowloris: 50 connections dribbling header bytes are closed by the server within 20 s; meanwhile normal requests are served at once", async () => {
    const lorises = Array.from({ length: 50 }, () => rawSession(fx.daemon.port, `${INGEST_HEAD}X-Slow: `, { chunk: "a", everyMs: 250 }));
    await sleep(1000);
    const t0 = Date.now();
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("loris-ok-1")));
    const servedMs = Date.now() - t0;
    assert.equal(res.status, 200, res.text);
    assert.ok(servedMs < 5000, `served in ${servedMs} ms while 50 slowloris connections were open`);

    const closes = await Promise.all(lorises.map((l) => within(l.closed, 25_000, -1)));
    const open = closes.filter((ms) => ms < 0).length;
    for (const l of lorises) l.stop();
    console.log(
      `[faults] slowloris: 50 header-dribbling connections closed by the server after ${Math.min(...closes)}-${Math.max(...closes)} ms; a normal request meanwhile took ${servedMs} ms`,
    );
    assert.equal(open, 0, "every slowloris connection was closed by the server");
    assert.ok(Math.max(...closes) < 20_000, `closed within 20 s (slowest ${Math.max(...closes)} ms)`);
    assert.ok(
      lorises.every((l) => !/^HTTP\/1\.1 2/.test(l.received())),
      "none got a success",
    );
  });

  test("stalled and dribbled bodies that reserve the whole ring: others get 503 + Retry-After (not a hang); the server cuts the stallers off within 20 s, the ring returns to 0, others succeed", async () => {
    const capacity = 2 * MiB;
    // All of the ring that priority-0 work may use: the rest is the reserve for priority above 0 (README "Priority").
    const general = capacity - (await metric(small.base, "ingestd_ring_reserve_bytes"));
    const head = `${INGEST_HEAD}Content-Length: ${general / 2}\r\n\r\n`;
    // Two bodies reserve all of it: one stalls after a few bytes, one dribbles a byte every 500 ms.
    const stalled = rawSession(small.port, `${head}[{"event_id":"stall-1"`);
    const dribbled = rawSession(small.port, `${head}[`, { chunk: " ", everyMs: 500 });
    await until("the stalled bodies to reserve the ring", async () => (await health(small.base)).json.ring.used_bytes === general, 5000);

    const t0 = Date.now();
    const refused = await post(`${small.base}/v1/streams/events/events`, JSON.stringify([event("stall-other-1")]));
    const refusedMs = Date.now() - t0;
    assert.equal(refused.status, 503, refused.text);
    assert.equal(refused.json.error, "overloaded");
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.ok(refusedMs < 5000, `refused after ${refusedMs} ms (deadline 1500)`);

    const [stalledMs, dribbledMs] = await Promise.all([within(stalled.closed, 25_000, -1), within(dribbled.closed, 25_000, -1)]);
    stalled.stop();
    dribbled.stop();
    console.log(
      `[faults] stalled bodies: ring ${general} of ${capacity} bytes reserved (the rest is for priority above 0); others refused 503 in ${refusedMs} ms; server closed the stalled body after ${stalledMs} ms, the dribbled one after ${dribbledMs} ms`,
    );
    assert.ok(stalledMs > 0 && stalledMs < 20_000, `stalled body closed by the server within 20 s (${stalledMs})`);
    assert.ok(dribbledMs > 0 && dribbledMs < 20_000, `dribbled body closed by the server within 20 s (${dribbledMs})`);
    await until("the ring to be released", async () => (await health(small.base)).json.ring.used_bytes === 0, 5000);
    const ok = await post(`${small.base}/v1/streams/events/events`, JSON.stringify([event("stall-other-2")]));
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(await idsWithPrefix("stall-"), ["stall-other-2"]);
  });
});

describe("WebSocket producers that misbehave", () => {
  test("producers that never read their acks are cut off at the 1 MiB outbound cap, and the daemon's memory does not grow with what they refuse to read", async () => {
    // 500 records with two unknown fields each are acked with 1,000 errors (maxErrorsReported): an ack of
    // ~140 KB per ~45 KB frame.
    const frame = JSON.stringify(
      Array.from({ length: 500 }, (_, i) => ({
        event_id: `noread-${i}`,
        service_name: "s",
        event_type: "t",
        payload: {},
        unknown_a: i,
        unknown_b: i,
      })),
    );
    const probe = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    clients.push(probe);
    probe.send(frame);
    const [sample] = await probe.waitForAcks(1);
    const ackBytes = Buffer.byteLength(JSON.stringify(sample));
    probe.socket.close();
    await until("the probe to go", async () => (await health(fx.daemon.base)).json.ws_connections === 0, 5000);

    const pid = fx.daemon.child.pid!;
    const N = 4;
    const ROUNDS_MAX = 60;
    // Control: the same frames from producers that do read their acks. Processing 1,000-error records
    // grows the worker heaps by itself; the rude producers below must not add to that.
    const baseline = rssBytes(pid);
    const controlRss = sampleRss(pid, 50);
    const polite = await Promise.all(Array.from({ length: N }, () => openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`)));
    clients.push(...polite);
    const window: number = polite[0].hello.window;
    for (let round = 1; round <= 3; round++) {
      for (const c of polite) for (let f = 0; f < window; f++) c.send(frame);
      await Promise.all(polite.map((c) => c.waitForAcks(round * window, 30_000)));
    }
    for (const c of polite) c.socket.close();
    await until("the polite producers to go", async () => (await health(fx.daemon.base)).json.ws_connections === 0, 5000);
    const controlPeak = controlRss.stop();

    const rss = sampleRss(pid, 50);
    const hostile: WebSocket[] = [];
    for (let i = 0; i < N; i++) {
      const ws = new WebSocket(`${fx.daemon.wsBase}/v1/ws?stream=events`, { perMessageDeflate: false });
      clients.push(ws);
      ws.on("error", () => undefined);
      await new Promise((r) => ws.once("message", r)); // the hello
      (ws as unknown as { _socket: net.Socket })._socket.pause(); // never read again
      hostile.push(ws);
    }
    const acksBefore = await metricSum(fx.daemon.base, "ingestd_ws_frames_total");
    // Each round sends one window of frames on every connection still open, then waits until the server
    // has written their acks (the window is respected: the producers are rude, not in violation). Without
    // a cap this would go on for 60 rounds: ~130 MiB of unread acks per connection.
    let rounds = 0;
    for (; rounds < ROUNDS_MAX; rounds++) {
      const conns = (await health(fx.daemon.base)).json.ws_connections as number;
      if (conns === 0) break;
      const before = await metricSum(fx.daemon.base, "ingestd_ws_frames_total");
      const open = hostile.filter((ws) => ws.readyState === WebSocket.OPEN);
      for (const ws of open) for (let f = 0; f < window; f++) ws.send(frame);
      await until(
        "acks written or connections cut",
        async () =>
          (await metricSum(fx.daemon.base, "ingestd_ws_frames_total")) >= before + conns * window ||
          (await health(fx.daemon.base)).json.ws_connections < conns,
        20_000,
        50,
      );
    }
    const acksWritten = (await metricSum(fx.daemon.base, "ingestd_ws_frames_total")) - acksBefore;
    const connsLeft = (await health(fx.daemon.base)).json.ws_connections;
    await sleep(1000);
    const peak = rss.stop();
    const perConnection = (acksWritten / N) * ackBytes;
    console.log(
      `[faults] non-reading producers: ${N} connections cut off after ${rounds} rounds of ${window} frames; ${acksWritten} acks of ${ackBytes} B written ` +
        `(${mib(perConnection)} MiB per connection, most of it in kernel socket buffers); daemon RSS ${mib(baseline)} MiB, ` +
        `peak with ${N} polite producers of the same frames ${mib(controlPeak)} MiB, peak with the non-reading ones ${mib(peak)} MiB`,
    );
    assert.equal(connsLeft, 0, "every non-reading producer was disconnected by the server");
    assert.ok(rounds < ROUNDS_MAX, "cut off long before the producers gave up");
    assert.ok(perConnection < 16 * MiB, `unread acks per connection bounded (${mib(perConnection)} MiB)`);
    // An uncapped server would hold every unread ack: ~130 MiB per connection by the 60th round, ~520 MiB for
    // the 4. Worker-heap GC timing alone moves the peak between two runs of the same frames: each record
    // here becomes 1,000 errors, 500 dead letters and a 140 KB ack (not bounded by the dispatcher's byte
    // budget, which counts bodies), and the polite run's peak landed 76-168 MiB under the rude one's in
    // repeated runs with the same cut-off after 3 rounds. 256 MiB sits between that noise and the failure.
    assert.ok(peak < controlPeak + 256 * MiB, `the unread acks cost ${mib(peak - controlPeak)} MiB over the polite run`);
    // Everyone else is unaffected.
    const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    clients.push(c);
    c.send(JSON.stringify(event("noread-after-1")));
    const [ack] = await c.waitForAcks(1);
    assert.equal(ack.accepted, 1);
    c.socket.close();
  });

  test("frames over max_frame_bytes (just over: 1009; over twice the limit: dropped) end only their own connection; nothing of them is stored", async () => {
    const good = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    clients.push(good);
    const sizes = [MAX_FRAME + 1, 2 * MAX_FRAME + 1, 10 * MAX_FRAME];
    const codes: number[] = [];
    for (const size of sizes) {
      const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
      clients.push(c);
      const base = JSON.stringify(event(`big-${size}`, { payload: { s: "" } })).length;
      c.send(JSON.stringify(event(`big-${size}`, { payload: { s: "z".repeat(size - base) } })));
      const closed = await within(c.closed, 10_000, null);
      assert.ok(closed, `a ${size}-byte frame ended its connection`);
      codes.push(closed.code);
      assert.deepEqual(c.acks, []);
    }
    good.send(JSON.stringify(event("big-neighbour-1")));
    const [ack] = await good.waitForAcks(1);
    assert.equal(ack.accepted, 1);
    console.log(`[faults] oversized frames of ${sizes.join(", ")} bytes (max ${MAX_FRAME}): close codes ${codes.join(", ")}`);
    assert.equal(codes[0], 1009);
    for (const code of codes) assert.ok(code === 1009 || code === 1006, `close ${code}`);
    assert.deepEqual(await idsWithPrefix("big-"), ["big-neighbour-1"]);
    good.socket.close();
  });

  test("floods of tiny frames within the window (20,000 of {}, x, [], 1, empty from 4 connections) are each acked in order, rejected; past the window (20 connections at once) 1008; the daemon serves on", async () => {
    const tiny = ["{}", "x", "[]", "1", ""];
    const perConnection = 5000;
    const t0 = Date.now();
    const floods = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
        clients.push(c);
        const window: number = c.hello.window;
        let sent = 0;
        while (sent < perConnection) {
          while (sent < perConnection && sent - c.acks.length < window) c.send(tiny[sent++ % tiny.length]);
          await c.waitForAcks(sent - window + 1, 20_000);
        }
        return c.waitForAcks(perConnection, 20_000).then((acks) => ({ c, acks }));
      }),
    );
    const floodMs = Date.now() - t0;
    for (const { c, acks } of floods) {
      assert.equal(acks.length, perConnection);
      acks.forEach((a, i) => {
        assert.equal(a.seq, i + 1);
        assert.equal(a.accepted, 0, JSON.stringify(a));
        assert.ok(a.rejected >= 1, JSON.stringify(a));
      });
      assert.equal(c.socket.readyState, WebSocket.OPEN);
      c.socket.close();
    }

    // Past the window: every connection is closed 1008, none takes the daemon with it.
    const violators = await Promise.all(Array.from({ length: 20 }, () => openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`)));
    clients.push(...violators);
    for (const v of violators) for (let i = 0; i < 200; i++) v.send("{}");
    const codes = await Promise.all(violators.map((v) => within(v.closed, 10_000, { code: -1, reason: "" })));
    assert.deepEqual([...new Set(codes.map((x) => x.code))], [1008]);
    for (const v of violators) assert.ok(v.acks.length <= v.hello.window);
    console.log(
      `[faults] tiny-frame flood: ${4 * perConnection} frames acked (all rejected, in order) in ${floodMs} ms (${Math.round((4 * perConnection) / (floodMs / 1000))} frames/s); 20 window violators closed 1008`,
    );
    const h = await health(fx.daemon.base);
    assert.equal(h.status, 200);
  });
});

describe("malformed upgrade requests (raw sockets)", () => {
  const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
  const upgrade = (lines: string[], requestLine = "GET /v1/ws?stream=events HTTP/1.1") =>
    `${requestLine}\r\nHost: 127.0.0.1\r\n${lines.map((l) => `${l}\r\n`).join("")}\r\n`;
  const cases: Array<[name: string, request: string | Buffer, expect: RegExp]> = [
    ["no Sec-WebSocket-Key", upgrade(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]), /^HTTP\/1\.1 4\d\d /],
    [
      "a Sec-WebSocket-Key of the wrong length",
      upgrade(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: abc", "Sec-WebSocket-Version: 13"]),
      /^HTTP\/1\.1 4\d\d /,
    ],
    [
      "Sec-WebSocket-Version 12",
      upgrade(["Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 12"]),
      /^HTTP\/1\.1 426 [\s\S]*\r\nSec-WebSocket-Version: 13\r\n/i,
    ],
    ["no Sec-WebSocket-Version", upgrade(["Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`]), /^HTTP\/1\.1 426 /],
    ["no Upgrade header", upgrade(["Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13"]), /^HTTP\/1\.1 400 /],
    [
      "Upgrade: h2c",
      upgrade(["Upgrade: h2c", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13"]),
      /^HTTP\/1\.1 400 /,
    ],
    [
      "no Connection: Upgrade",
      upgrade(["Upgrade: websocket", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13"]),
      /^HTTP\/1\.1 400 /,
    ],
    [
      "POST with upgrade headers",
      upgrade(
        ["Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13", "Content-Length: 0"],
        "POST /v1/ws?stream=events HTTP/1.1",
      ),
      /^HTTP\/1\.1 4\d\d /,
    ],
    [
      "an unknown stream",
      upgrade(
        ["Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13"],
        "GET /v1/ws?stream=nope HTTP/1.1",
      ),
      /^HTTP\/1\.1 404 /,
    ],
    [
      "a TLS ClientHello on the plain port",
      Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0x00, 0xfb, 0x03, 0x03, 0x0d, 0x0a, 0x0d, 0x0a]),
      /^(HTTP\/1\.1 4\d\d |)$/,
    ],
    ["a garbage request line", "GARBAGE\r\n\r\n", /^(HTTP\/1\.1 4\d\d |)$/],
    [
      "an HTTP/1.0 upgrade",
      upgrade(
        ["Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${KEY}`, "Sec-WebSocket-Version: 13"],
        "GET /v1/ws?stream=events HTTP/1.0",
      ),
      /^(HTTP\/1\.[01] 4\d\d |)$/,
    ],
  ];

  test(`${cases.length} malformed upgrades are refused (4xx or closed, never 101) and the connection ends within 20 s; a proper upgrade still works`, async () => {
    const results = await Promise.all(
      cases.map(async ([name, request, expect]) => {
        const s = rawSession(fx.daemon.port, request);
        const closedMs = await within(s.closed, 20_000, -1);
        s.stop();
        const head = s.received().split("\r\n\r\n")[0];
        return { name, closedMs, head, expect };
      }),
    );
    for (const r of results) {
      assert.doesNotMatch(r.head, /^HTTP\/1\.1 101/, `${r.name}: upgraded!\n${r.head}`);
      assert.match(r.head, r.expect, `${r.name}: ${r.head || "(nothing)"}`);
      assert.ok(r.closedMs >= 0, `${r.name}: the server ended the connection within 20 s`);
    }
    console.log(
      `[faults] malformed upgrades: ${results.map((r) => `${r.name} → ${r.head.split("\r\n")[0] || "closed"} (${r.closedMs} ms)`).join("; ")}`,
    );
    const c = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    clients.push(c);
    c.send(JSON.stringify(event("upgrade-after-1")));
    assert.equal((await c.waitForAcks(1))[0].accepted, 1);
    c.socket.close();
  });
});

describe("after all of it", () => {
  test("both daemons are alive and healthy, logged nothing fatal, and ingest a valid event", async () => {
    for (const d of [fx.daemon, small]) {
      assert.equal(d.child.exitCode, null);
      const h = await health(d.base);
      assert.equal(h.status, 200);
      assert.equal(h.json.ring.used_bytes, 0);
      const res = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(event(`hostile-final-${d.port}`)));
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(
        d.output.filter((l) => /"level":"?(60|fatal)/.test(l)),
        [],
      );
    }
  });
});

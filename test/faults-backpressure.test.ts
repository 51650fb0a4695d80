/**
 * Issue 6 item 1, backpressure end to end (docs/architecture.md; docs/websocket-protocol.md; docs/storage.md, Durability and failure): when PostgreSQL falls behind, the bounded ring
 * fills, HTTP requests wait and past OVERLOAD_DEADLINE_MS get 503 with Retry-After, WebSocket acks wait and
 * past the deadline the connection closes 1013; nothing is acknowledged while nothing can commit; once the
 * database catches up everything acknowledged is stored exactly once.
 *
 * "Falls behind" is made two ways: PostgreSQL frozen with SIGSTOP (commits hang, the realest stall), and an
 * operator's lock on the events table (commits wait while PostgreSQL itself stays healthy). Resident memory
 * under 200 producers is test/faults-memory.test.ts.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import pg from "pg";
import { event, openWs, post, waitFor, type Daemon } from "./harness";
import {
  allAckedIds,
  checkStored,
  doubledWithPrefix,
  freezePostgres,
  health,
  httpProducer,
  metric,
  mib,
  MiB,
  sampleRss,
  thawPostgres,
  total,
  until,
  wsProducer,
  type Producer,
  faultFixture,
} from "./faults-helpers";

/** A database; each test starts its daemon (launch). */
const fx = faultFixture();
const { producers } = fx;

/** Small ring (2 MiB: a 1.75 MiB shard and the 256 KiB reserve for priority above 0), one worker, a short deadline: easy to fill, quick to refuse. */
const SMALL = { RING_MB: "2", MAX_BODY_MB: "1", WORKERS: "1", OVERLOAD_DEADLINE_MS: "1500", WS_MAX_FRAME_BYTES: "262144" };

function launch(env: Record<string, string>): Promise<Daemon> {
  return fx.startDaemon({ env });
}

/** Polls ring usage every 50 ms and keeps the highest value seen. */
function watchRing(base: string): { readonly peak: number; readonly last: number; stop(): void } {
  let peak = 0;
  let last = 0;
  let running = true;
  void (async () => {
    while (running) {
      try {
        last = await metric(base, "ingestd_ring_used_bytes");
        if (last > peak) peak = last;
      } catch {
        // daemon busy or gone: next round
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const stop = () => {
    running = false;
  };
  fx.teardown(stop);
  return {
    get peak() {
      return peak;
    },
    get last() {
      return last;
    },
    stop,
  };
}

function outcome(ps: Producer[], key: string): number {
  return total(ps).outcomes[key] ?? 0;
}

describe("PostgreSQL falls behind a small ring", () => {
  test("frozen PostgreSQL (SIGSTOP): ring fills, HTTP 503 + Retry-After, WS acks withheld then 1013, nothing acked while frozen; after SIGCONT every acked event is stored once", async () => {
    const d = await launch(SMALL);
    const warm = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(event("bp-warm")));
    assert.equal(warm.status, 200, warm.text);
    const capacity = await metric(d.base, "ingestd_ring_capacity_bytes");
    const rss = sampleRss(d.child.pid!);
    fx.teardown(() => rss.stop());

    freezePostgres(fx.db);
    const frozenAt = Date.now();
    const ring = watchRing(d.base);
    // Offered: 24 requests of ~100 KB plus 12 × 16 frames of ~10 KB, about 4.4 MB, against a 2 MiB ring.
    const http = Array.from({ length: 24 }, (_, i) => httpProducer(d.base, { prefix: `bp-h${i}`, perUnit: 1000, resend: true }));
    const ws = Array.from({ length: 12 }, (_, i) => wsProducer(d.wsBase, { prefix: `bp-w${i}`, perUnit: 100, resend: true }));
    const all = [...http, ...ws];
    producers.push(...all);

    let healthDuringFreeze: { status: number; json: any } | null = null;
    let ackedEarly = -1;
    let ackedAtThaw = -1;
    try {
      // Whatever commit was already answered when the signal landed has settled half a second later.
      await new Promise((r) => setTimeout(r, 500));
      ackedEarly = total(all).ackedUnits;
      await until(
        "the ring to fill, an HTTP 503 and a WebSocket 1013",
        () => ring.peak >= 0.8 * capacity && outcome(http, "503") > 0 && outcome(ws, "close 1013") > 0,
        20_000,
        50,
        () => `ring peak ${ring.peak} of ${capacity}, outcomes ${JSON.stringify(total(all).outcomes)}`,
      );
      healthDuringFreeze = await health(d.base);
      ackedAtThaw = total(all).ackedUnits;
    } finally {
      thawPostgres();
    }
    const frozenMs = Date.now() - frozenAt;

    // PostgreSQL is back: work resumes without any help.
    const before = total(all).ackedUnits;
    await until(
      "acks to resume after SIGCONT",
      () => total(all).ackedUnits >= before + 20,
      30_000,
      50,
      () => JSON.stringify(total(all).outcomes),
    );
    await Promise.all(all.map((p) => p.stop({ drain: true, timeoutMs: 30_000 })));
    ring.stop();
    const rssPeak = rss.stop();

    const t = total(all);
    assert.deepEqual(t.protocolErrors, []);
    assert.equal(ackedAtThaw, ackedEarly, "no acknowledgement (HTTP 200 or WebSocket ack) while PostgreSQL was frozen");
    assert.ok(ring.peak >= 0.8 * capacity, `ring peak ${ring.peak} of ${capacity}`);
    assert.ok(ring.peak <= capacity);
    assert.equal(t.retryAfterMissing, 0, "every 503 carried Retry-After");
    assert.equal(healthDuringFreeze?.status, 503, JSON.stringify(healthDuringFreeze?.json));
    assert.equal(healthDuringFreeze?.json.database, "disconnected");
    for (const p of all) assert.deepEqual(p.unackedIds(), [], `${p.stats.name} drained`);

    const check = await checkStored(fx.db.url, allAckedIds(all));
    assert.equal(check.checked, t.ackedEvents);
    assert.equal(check.missing, 0, `acknowledged but missing: ${check.missingSample}`);
    assert.equal(check.doubled, 0, `stored twice: ${check.doubledSample}`);
    assert.deepEqual(await doubledWithPrefix(fx.db, "bp-"), []);
    assert.ok(rssPeak < 512 * MiB, `RSS peak ${mib(rssPeak)} MiB`);

    const h = await health(d.base);
    assert.equal(h.status, 200);
    assert.equal(h.json.ring.used_bytes, 0, "the ring is empty once everything is answered");
    console.log(
      `[faults] backpressure/SIGSTOP: frozen ${frozenMs} ms; ring peak ${ring.peak} of ${capacity} bytes; ` +
        `HTTP 503 ×${outcome(http, "503")}, WS 1013 ×${outcome(ws, "close 1013")}; acked during freeze 0; ` +
        `${t.ackedEvents} events acked (${t.duplicates} as duplicates of resent units), missing 0, doubled 0; ` +
        `daemon RSS peak ${mib(rssPeak)} MiB`,
    );
  });

  test("events table locked (PostgreSQL healthy but commits wait): /health stays 200, HTTP 503 overloaded with Retry-After, WS 1013; once unlocked, every acked event is stored once", async () => {
    const d = await launch(SMALL);
    const capacity = await metric(d.base, "ingestd_ring_capacity_bytes");
    const locker = new pg.Client({ connectionString: fx.db.url });
    await locker.connect();
    await locker.query("BEGIN");
    // SHARE conflicts with the INSERTs of a commit and with nothing a health probe does.
    await locker.query("LOCK TABLE events IN SHARE MODE");
    const lockedAt = Date.now();

    const ring = watchRing(d.base);
    const http = Array.from({ length: 24 }, (_, i) => httpProducer(d.base, { prefix: `lk-h${i}`, perUnit: 1000, resend: true }));
    const ws = Array.from({ length: 12 }, (_, i) => wsProducer(d.wsBase, { prefix: `lk-w${i}`, perUnit: 100, resend: true }));
    const all = [...http, ...ws];
    producers.push(...all);
    const overloaded: string[] = [];
    let refusedAfterMs = -1;
    let healthWhileLocked: number[] = [];
    try {
      await until(
        "the ring to fill, an HTTP 503 and a WebSocket 1013",
        () => ring.peak >= 0.8 * capacity && outcome(http, "503") > 0 && outcome(ws, "close 1013") > 0,
        20_000,
        50,
        () => `ring peak ${ring.peak} of ${capacity}, outcomes ${JSON.stringify(total(all).outcomes)}`,
      );
      // One more request: it waits for ring space (503 overloaded) or gets in once stalled commits are given up
      // and its own commit stalls on the lock (503 database_unavailable); either way after the deadline.
      const probeAt = Date.now();
      const refused = await post(
        `${d.base}/v1/streams/events/events`,
        JSON.stringify(Array.from({ length: 1000 }, (_, i) => event(`lk-probe-${i}`))),
      );
      refusedAfterMs = Date.now() - probeAt;
      overloaded.push(`${refused.status} ${refused.json?.error} retry-after=${refused.headers.get("retry-after")}`);
      healthWhileLocked = await Promise.all([health(d.base), health(d.base)].map((p) => p.then((h) => h.status)));
    } finally {
      await locker.query("COMMIT").catch(() => undefined);
      await locker.end().catch(() => undefined);
    }
    const lockedMs = Date.now() - lockedAt;
    const before = total(all).ackedUnits;
    await until(
      "acks to resume after the lock",
      () => total(all).ackedUnits >= before + 20,
      30_000,
      50,
      () => JSON.stringify(total(all).outcomes),
    );
    await Promise.all(all.map((p) => p.stop({ drain: true, timeoutMs: 30_000 })));
    ring.stop();

    const t = total(all);
    assert.deepEqual(t.protocolErrors, []);
    assert.equal(overloaded.length, 1);
    assert.match(overloaded[0], /^503 (overloaded|database_unavailable) retry-after=1$/);
    // It waited for the deadline (1500 ms), then was refused: not at once, not never.
    assert.ok(refusedAfterMs >= 1400 && refusedAfterMs < 6000, `refused after ${refusedAfterMs} ms`);
    assert.deepEqual(healthWhileLocked, [200, 200], "PostgreSQL itself was fine: /health said so");
    assert.equal(t.retryAfterMissing, 0);
    for (const p of all) assert.deepEqual(p.unackedIds(), [], `${p.stats.name} drained`);
    const check = await checkStored(fx.db.url, allAckedIds(all));
    assert.equal(check.missing, 0, `acknowledged but missing: ${check.missingSample}`);
    assert.equal(check.doubled, 0, `stored twice: ${check.doubledSample}`);
    assert.deepEqual(await doubledWithPrefix(fx.db, "lk-"), []);
    assert.equal((await health(d.base)).json.ring.used_bytes, 0);
    console.log(
      `[faults] backpressure/lock: locked ${lockedMs} ms; ring peak ${ring.peak} of ${capacity}; a request waited ${refusedAfterMs} ms, then ${overloaded[0]}; HTTP 503 ×${outcome(http, "503")}, ` +
        `WS 1013 ×${outcome(ws, "close 1013")}; ${t.ackedEvents} events acked, missing 0, doubled 0`,
    );
  });

  test("frozen PostgreSQL: a WebSocket frame and an HTTP request already in the ring are refused (1013 / 503) once the deadline passes, not held until PostgreSQL returns", async () => {
    const d = await launch(SMALL);
    const c = await openWs(`${d.wsBase}/v1/ws?stream=events`);
    c.send(JSON.stringify(event("hung-warm")));
    await c.waitForAcks(1);
    freezePostgres(fx.db);
    const frozenAt = Date.now();
    let wsClose: { code: number; ms: number } | null = null;
    let httpAnswer: { status: number; ms: number } | null = null;
    try {
      c.send(JSON.stringify([event("hung-ws-1"), event("hung-ws-2")]));
      void c.closed.then((x) => (wsClose = { code: x.code, ms: Date.now() - frozenAt }));
      void post(`${d.base}/v1/streams/events/events`, JSON.stringify([event("hung-http-1")])).then(
        (r) => (httpAnswer = { status: r.status, ms: Date.now() - frozenAt }),
        () => (httpAnswer = { status: 0, ms: Date.now() - frozenAt }),
      );
      // Deadline 1.5 s, database probe 2 s, a resubmission or two: 12 s is ample.
      await until(
        "the WebSocket close and the HTTP answer",
        () => wsClose !== null && httpAnswer !== null,
        12_000,
        100,
        () => `ws ${JSON.stringify(wsClose)}, http ${JSON.stringify(httpAnswer)}, acks ${c.acks.length}`,
      ).catch(() => undefined);
    } finally {
      thawPostgres();
    }
    console.log(
      `[faults] hung database: WS ${JSON.stringify(wsClose)}, HTTP ${JSON.stringify(httpAnswer)} (frozen for ${Date.now() - frozenAt} ms)`,
    );
    assert.equal((wsClose as { code: number } | null)?.code, 1013, "the frame's connection closed 1013 while PostgreSQL was frozen");
    assert.equal((httpAnswer as { status: number } | null)?.status, 503, "the request was answered 503 while PostgreSQL was frozen");
    // Refused once the deadline passed, not at once.
    for (const [what, ms] of [
      ["HTTP answered", (httpAnswer as unknown as { ms: number }).ms],
      ["WebSocket closed", (wsClose as unknown as { ms: number }).ms],
    ] as const) {
      assert.ok(ms >= 1400, `${what} after ${ms} ms`);
    }
    c.socket.terminate();
    // The given-up connection is replaced: once PostgreSQL is back, the same daemon commits again.
    const after = await waitFor(
      "an answer other than 503 after the thaw",
      async () => {
        const r = await post(`${d.base}/v1/streams/events/events`, JSON.stringify([event("hung-after")]));
        return r.status === 503 ? null : r;
      },
      5_000,
      250,
    );
    assert.equal(after.status, 200, after.text);
  });
});

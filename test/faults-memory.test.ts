/**
 * Issue 6 item 1, memory half (docs/architecture.md: "Memory never grows without bound"; docs/performance.md "Resident memory bounded
 * (under 512 MiB) whatever the offered load"): 200 producers (160 WebSocket connections keeping their ack
 * window full, 40 HTTP producers posting back to back) push as fast as they can through a full-speed
 * phase, a 5 s PostgreSQL freeze (SIGSTOP: the ring fills, producers are refused with 1013 / 503 and come
 * back) and the recovery. The daemon's resident set (VmRSS, all threads) is sampled every 50 ms and must
 * stay under 512 MiB; every acknowledged event must be stored exactly once afterwards.
 *
 * Production sizes (64 MiB ring, 16 MiB bodies, 2 workers); only the overload deadline is shortened so the
 * freeze produces refusals within its 5 s.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  allAckedIds,
  checkStored,
  freezePostgres,
  health,
  httpProducer,
  mib,
  MiB,
  sampleRss,
  sleep,
  thawPostgres,
  total,
  until,
  wsProducer,
  faultFixture,
} from "./faults-helpers";

/** A database; each test starts its daemon (run200). */
const fx = faultFixture();
const { producers } = fx;

interface Shape {
  label: string;
  prefix: string;
  wsPerFrame: number;
  httpPerRequest: number;
  /** Extra payload bytes per event. */
  padBytes: number;
}

/** Runs the load; asserts what it acknowledged is stored exactly once; returns the daemon's RSS peak. */
async function run200(shape: Shape): Promise<number> {
  const d = await fx.startDaemon({ env: { OVERLOAD_DEADLINE_MS: "2000" } });
  const pid = d.child.pid!;
  const rss = sampleRss(pid, 50);
  fx.teardown(() => rss.stop());
  const idleRss = rss.last;
  const common = { resend: true, padBytes: shape.padBytes };
  const ws = Array.from({ length: 160 }, (_, i) =>
    wsProducer(d.wsBase, { ...common, prefix: `${shape.prefix}-w${i}`, perUnit: shape.wsPerFrame, retryDelayMs: 500 }),
  );
  const http = Array.from({ length: 40 }, (_, i) =>
    httpProducer(d.base, { ...common, prefix: `${shape.prefix}-h${i}`, perUnit: shape.httpPerRequest }),
  );
  const all = [...ws, ...http];
  producers.push(...all);
  const started = Date.now();

  // Full speed: let the pipeline fill, then measure what it holds for 6 s.
  await until("the first acknowledgements", () => total(all).ackedEvents > 0, 30_000, 100);
  await sleep(2000);
  const fullFrom = Date.now();
  const ackedBefore = total(all).ackedEvents;
  await sleep(6000);
  const fullMs = Date.now() - fullFrom;
  const fullEvents = total(all).ackedEvents - ackedBefore;

  // PostgreSQL stops answering: the ring fills and stays full, producers are refused and retry.
  freezePostgres(fx.db);
  const frozenAt = Date.now();
  try {
    await sleep(5000);
  } finally {
    thawPostgres();
  }
  const frozenMs = Date.now() - frozenAt;
  const ackedAtThaw = total(all).ackedUnits;
  await until("acks to resume after the freeze", () => total(all).ackedUnits >= ackedAtThaw + 200, 30_000, 100);
  await sleep(3000);
  await Promise.all(all.map((p) => p.stop({ drain: true, timeoutMs: 45_000 })));
  const elapsedMs = Date.now() - started;
  const peak = rss.stop();

  const t = total(all);
  const rate = Math.round((fullEvents / fullMs) * 1000);
  console.log(
    `[faults] memory/${shape.label}: daemon RSS idle ${mib(idleRss)} MiB, peak ${mib(peak)} MiB (bound 512); ` +
      `held ${rate} events/s at full speed; froze PostgreSQL ${frozenMs} ms; ${t.ackedEvents} events acked in ${elapsedMs} ms ` +
      `(WS 1013 ×${t.outcomes["close 1013"] ?? 0}, HTTP 503 ×${t.outcomes["503"] ?? 0}, resent units ${t.resentUnits})`,
  );
  assert.deepEqual(t.protocolErrors, []);
  for (const p of all) assert.deepEqual(p.unackedIds(), [], `${p.stats.name} drained`);
  const check = await checkStored(fx.db.url, allAckedIds(all));
  console.log(
    `[faults] memory/${shape.label}: ${check.checked} acknowledged events checked: missing ${check.missing}, doubled ${check.doubled}`,
  );
  assert.equal(check.checked, t.ackedEvents);
  assert.equal(check.missing, 0, `acknowledged but missing: ${check.missingSample}`);
  assert.equal(check.doubled, 0, `stored twice: ${check.doubledSample}`);
  assert.equal((await health(d.base)).status, 200);
  await d.stop();
  return peak;
}

const peaks: Record<string, number> = {};

function assertUnderBound(label: string): void {
  const peak = peaks[label];
  assert.ok(peak !== undefined, `the ${label} load ran`);
  assert.ok(peak < 512 * MiB, `daemon RSS peak ${mib(peak)} MiB, over the 512 MiB bound`);
}

/*
 * History (issue 6 item 1): these bounds failed at 640-1070 MiB (idle ~85 MiB) while the dispatcher handed
 * the workers every body in the 64 MiB ring: V8 --trace-gc showed each of the 2 worker heaps growing to
 * 360-470 MB between major GCs for 90-100 MB live (the parsed records and encoded COPY rows of every task
 * waiting for its group commit). The dispatcher now admits bodies to the workers by bytes (workerBacklogMb
 * per worker; the rest wait in the ring, ordered by priority): measured 408-417 MiB (100 B events) and
 * 386-388 MiB (1 KiB events) in three runs on the shared 2-core machine.
 */
test("200 producers of bench-shaped events (~100 B each, 100 a frame / 1000 a request) through full speed, a 5 s PostgreSQL freeze and recovery: every acked event stored once; RSS sampled", async () => {
  peaks.bench = await run200({ label: "100B events", prefix: "m1", wsPerFrame: 100, httpPerRequest: 1000, padBytes: 0 });
});

test("… and the daemon's RSS stayed under 512 MiB throughout", () => assertUnderBound("bench"));

test("200 producers of ~1 KiB events (50 a frame / 200 a request: the bytes fill the ring and overflow into 1013 / 503) through the same phases: every acked event stored once; RSS sampled", async () => {
  peaks.big = await run200({ label: "1KiB events", prefix: "m2", wsPerFrame: 50, httpPerRequest: 200, padBytes: 900 });
});

test("… and the daemon's RSS stayed under 512 MiB throughout", () => assertUnderBound("big"));

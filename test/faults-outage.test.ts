/**
 * Issue 6 item 2, PostgreSQL outage under load (docs/storage.md, Durability and failure): producers stream over WebSocket and HTTP, into
 * the deduplicating `events` stream (exactly once) and the plain `logs` stream (at least once); PostgreSQL
 * is stopped for 10 s and started again. During the outage /health is 503 and nothing is acknowledged;
 * producers refused with 503 / 1013 resend the same events, as an SDK would; afterwards the same daemon
 * process reconnects by itself and resumes, and every acknowledged event is stored (events: exactly once,
 * including everything resent).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { post, event } from "./harness";
import {
  allAckedIds,
  checkStored,
  doubledWithPrefix,
  health,
  httpProducer,
  sleep,
  total,
  until,
  wsProducer,
  faultFixture,
} from "./faults-helpers";

/** A database (stopped and restarted by the test); the test starts its daemon through fx. */
const fx = faultFixture();
const { producers } = fx;
let polling = false;
fx.teardown(() => {
  polling = false;
});

const OUTAGE_MS = 10_000;
const DEADLINE_MS = 4000;

const logRecord = (id: string) => ({ service_name: "outage", severity: "INFO", message: `log ${id}`, payload: { n: id } });

test("PostgreSQL stopped for 10 s under load: /health 503, nothing acknowledged meanwhile, the daemon reconnects by itself, every acked event is stored (exactly once in events, resends included)", async () => {
  const d = await fx.startDaemon({ env: { OVERLOAD_DEADLINE_MS: String(DEADLINE_MS) } });
  const pid = d.child.pid;
  const events = [
    ...Array.from({ length: 6 }, (_, i) => wsProducer(d.wsBase, { prefix: `out-w${i}`, perUnit: 50, resend: true, retryDelayMs: 500 })),
    ...Array.from({ length: 4 }, (_, i) => httpProducer(d.base, { prefix: `out-h${i}`, perUnit: 200, resend: true })),
  ];
  const logs = [
    wsProducer(d.wsBase, { prefix: "out-lw", perUnit: 50, resend: true, retryDelayMs: 500, stream: "logs", record: logRecord }),
    httpProducer(d.base, { prefix: "out-lh", perUnit: 200, resend: true, path: "/v1/streams/logs/events", record: logRecord }),
  ];
  const all = [...events, ...logs];
  producers.push(...all);
  const state = () => JSON.stringify(total(all).outcomes);

  await until("every producer acknowledged", () => all.every((p) => p.stats.ackedUnits >= 3), 30_000, 50, state);
  const loadFrom = Date.now();
  const ackedAtLoadFrom = total(all).ackedEvents;
  await sleep(3000);
  const ackedBeforeOutage = total(all).ackedEvents;

  // --- the outage -------------------------------------------------------------------------------------
  const stopAt = Date.now();
  await fx.db.server.stop();
  const stoppedMs = Date.now() - stopAt;
  const loadMs = stopAt - loadFrom;
  const healthSeen: Array<{ at: number; status: number; database: string }> = [];
  polling = true;
  const poller = (async () => {
    while (polling) {
      const at = Date.now() - stopAt;
      try {
        const h = await health(d.base, 4000);
        healthSeen.push({ at, status: h.status, database: h.json.database });
      } catch {
        healthSeen.push({ at, status: 0, database: "no answer" });
      }
      await sleep(250);
    }
  })();
  // Whatever was committed before the server went down has been answered a second later.
  await sleep(1000);
  const ackedEarlyInOutage = total(all).ackedUnits;
  await sleep(Math.max(0, OUTAGE_MS - (Date.now() - stopAt)));
  const ackedLateInOutage = total(all).ackedUnits;
  const outcomesInOutage = total(all).outcomes;
  const restartAt = Date.now();
  await fx.db.server.restart();
  const outageMs = Date.now() - stopAt;

  // --- recovery, by the daemon alone ------------------------------------------------------------------
  const healthyAfterMs = await until(
    "/health 200 again",
    async () => (await health(d.base).catch(() => ({ status: 0 }))).status === 200,
    30_000,
    100,
  );
  polling = false;
  await poller;
  const ackedAtRestart = total(all).ackedUnits;
  await until("every producer acknowledging again", () => total(all).ackedUnits >= ackedAtRestart + 40, 30_000, 50, state);
  const fresh = await post(`${d.base}/v1/streams/events/events`, JSON.stringify([event("out-fresh-1")]));
  await sleep(2000);
  await Promise.all(all.map((p) => p.stop({ drain: true, timeoutMs: 30_000 })));

  // --- what the producers saw -------------------------------------------------------------------------
  const t = total(all);
  const duringOutage = healthSeen.filter((h) => h.at >= stoppedMs && h.at < restartAt - stopAt);
  console.log(
    `[faults] outage: PostgreSQL down ${outageMs} ms (stop took ${stoppedMs} ms); /health 200 again ${healthyAfterMs} ms after restart; ` +
      `load before the outage ${Math.round(((ackedBeforeOutage - ackedAtLoadFrom) / loadMs) * 1000)} events/s; ` +
      `refusals: ${JSON.stringify(outcomesInOutage)}; ${t.ackedEvents} events acked (${t.duplicates} as duplicates of resent units, ` +
      `${t.resentUnits} units resent)`,
  );
  assert.deepEqual(t.protocolErrors, []);
  assert.equal(d.child.exitCode, null, "the same daemon process served throughout");
  assert.equal(d.child.pid, pid);
  assert.equal(fresh.status, 200, fresh.text);

  assert.ok(duringOutage.length >= 10, `health polled during the outage: ${JSON.stringify(healthSeen)}`);
  assert.deepEqual(
    duringOutage.filter((h) => !(h.status === 503 && h.database === "disconnected")),
    [],
    "every /health during the outage said 503 disconnected",
  );
  assert.equal(ackedLateInOutage, ackedEarlyInOutage, "nothing was acknowledged while PostgreSQL was down");
  assert.ok((outcomesInOutage["503"] ?? 0) > 0, "HTTP producers were told 503");
  assert.ok((outcomesInOutage["close 1013"] ?? 0) > 0, `WebSocket producers were closed 1013 past the ${DEADLINE_MS} ms deadline`);
  assert.equal(t.retryAfterMissing, 0, "every 503 carried Retry-After");
  assert.ok(t.resentUnits > 0, "refused units were resent");
  for (const p of all) assert.deepEqual(p.unackedIds(), [], `${p.stats.name}: every unit acknowledged in the end`);

  // --- what PostgreSQL holds --------------------------------------------------------------------------
  const ev = await checkStored(fx.db.url, allAckedIds(events));
  assert.equal(ev.checked, total(events).ackedEvents);
  assert.equal(ev.missing, 0, `acknowledged but missing: ${ev.missingSample}`);
  assert.equal(ev.doubled, 0, `stored twice: ${ev.doubledSample}`);
  assert.deepEqual(await doubledWithPrefix(fx.db, "out-"), [], "no event stored twice, acknowledged or not");
  const lg = await checkStored(fx.db.url, allAckedIds(logs), "logs", "payload->>'n'");
  assert.equal(lg.missing, 0, `acknowledged logs missing: ${lg.missingSample}`);
  console.log(
    `[faults] outage: events ${ev.checked} acked, lost 0, doubled 0 (exactly once); logs ${lg.checked} acked, lost 0, ` +
      `stored more than once ${lg.doubled} (at least once)`,
  );
  const { code } = await d.stop();
  assert.equal(code, 0);
});

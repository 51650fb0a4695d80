/**
 * Issue 6 item 4, SIGTERM under load (docs/storage.md, Durability and failure: "stop accepting, drain the ring, commit, answer and ack, exit
 * 0 within the stop timeout"). test/durability.test.ts already shows the basic drain (2 WebSocket
 * producers and 10 requests in flight, exit 0, 1001). This file extends it rather than repeating it:
 *
 * - heavier and continuous load (16 WebSocket producers with full windows, 8 HTTP producers posting back to
 *   back) with an explicit STOP_TIMEOUT_MS, checking the exit happens within it, that each producer's
 *   stored events are exactly its acknowledged ones (nothing committed is left unacknowledged, nothing
 *   acknowledged is missing), that requests arriving during the drain are refused with 503 + Retry-After
 *   and not stored, and that new connections are not accepted;
 * - SIGTERM while PostgreSQL is frozen (SIGSTOP), where the drain cannot finish: the daemon must still exit
 *   within the stop timeout and must not have acknowledged anything that was not committed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";
import { event, openWs } from "./harness";
import {
  allAckedIds,
  checkStored,
  freezePostgres,
  httpProducer,
  sleep,
  thawPostgres,
  total,
  until,
  wsProducer,
  faultFixture,
} from "./faults-helpers";

/** A database; each test starts its daemon through fx. */
const fx = faultFixture();
const { producers } = fx;

async function storedWithPrefix(prefix: string): Promise<string[]> {
  const res = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

/** Whether a WebSocket upgrade to `url` succeeds (false when refused at TCP or HTTP level). */
function canConnect(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.on("open", () => {
      ws.terminate();
      resolve(true);
    });
    ws.on("error", () => resolve(false));
    ws.on("unexpected-response", (req) => {
      req.destroy();
      resolve(false);
    });
  });
}

const STOP_TIMEOUT_MS = 10_000;

test("SIGTERM under continuous load (16 WS + 8 HTTP producers): exit 0 within STOP_TIMEOUT_MS, every WS closes 1001, stored == acknowledged per producer, drain-time requests refused 503 + Retry-After", async () => {
  // A group-commit age of 200 ms keeps plenty in flight at the signal.
  const d = await fx.startDaemon({ env: { STOP_TIMEOUT_MS: String(STOP_TIMEOUT_MS), BATCH_TIMEOUT_MS: "200" } });
  const ws = Array.from({ length: 16 }, (_, i) => wsProducer(d.wsBase, { prefix: `term-w${i}-`, perUnit: 50, resend: false }));
  const http = Array.from({ length: 8 }, (_, i) => httpProducer(d.base, { prefix: `term-h${i}-`, perUnit: 100, resend: false }));
  const all = [...ws, ...http];
  producers.push(...all);
  await until(
    "load established",
    () => all.every((p) => p.stats.ackedUnits >= 3),
    30_000,
    20,
    () => JSON.stringify(total(all).outcomes),
  );
  const loadFrom = Date.now();
  const ackedAtLoad = total(all).ackedEvents;
  await sleep(1500);
  const rate = Math.round(((total(all).ackedEvents - ackedAtLoad) / (Date.now() - loadFrom)) * 1000);
  const inFlightWs = ws.reduce((n, p) => n + p.stats.sentUnits - p.stats.ackedUnits, 0);

  const termAt = Date.now();
  d.child.kill("SIGTERM");
  // The listening socket closes first: new connections are not taken.
  await until("the listening socket to close", async () => !(await canConnect(`${d.wsBase}/v1/ws?stream=events`)), 5000, 50);
  const exit = await d.exited;
  const stopMs = Date.now() - termAt;
  await Promise.race([Promise.all(all.map((p) => p.done)), sleep(10_000)]);
  await Promise.all(all.map((p) => p.stop()));

  const t = total(all);
  console.log(
    `[faults] sigterm/load: ${rate} events/s at the signal, ${inFlightWs} WS frames unacknowledged at SIGTERM; exit ${exit.code ?? exit.signal} after ${stopMs} ms ` +
      `(STOP_TIMEOUT_MS ${STOP_TIMEOUT_MS}); outcomes ${JSON.stringify(t.outcomes)}; ${t.ackedEvents} events acked`,
  );
  assert.equal(exit.code, 0, d.output.slice(-10).join("\n"));
  assert.ok(stopMs < STOP_TIMEOUT_MS, `exited after ${stopMs} ms`);
  assert.deepEqual(t.protocolErrors, []);
  assert.ok(inFlightWs > 0, "frames were in flight at the signal");
  assert.equal(t.outcomes["close 1001"], ws.length, "every WebSocket was closed with 1001");
  assert.equal(t.retryAfterMissing, 0, "every drain-time 503 carried Retry-After");
  // Exactly what was acknowledged is stored: the drain committed and answered everything it took, and
  // refused (503) or never read what it did not take.
  for (const p of all) {
    const prefix = p.stats.name.replace(/^(ws|http) /, "");
    assert.deepEqual(await storedWithPrefix(prefix), [...p.stats.ackedIds].sort(), `${p.stats.name}: stored == acknowledged`);
  }
  const check = await checkStored(fx.db.url, allAckedIds(all));
  assert.equal(check.missing, 0);
  assert.equal(check.doubled, 0);
});

test("SIGTERM while PostgreSQL is frozen: the drain cannot finish, yet the daemon exits within STOP_TIMEOUT_MS (status 1, saying why), and nothing it acknowledged is missing once PostgreSQL is back", async () => {
  const stopTimeout = 3000;
  const d = await fx.startDaemon({ env: { STOP_TIMEOUT_MS: String(stopTimeout) } });
  const c = await openWs(`${d.wsBase}/v1/ws?stream=events`);
  c.send(JSON.stringify([event("termfrozen-1")]));
  await c.waitForAcks(1);
  const ws = wsProducer(d.wsBase, { prefix: "termfrozen-w-", perUnit: 20, resend: false });
  const http = httpProducer(d.base, { prefix: "termfrozen-h-", perUnit: 20, resend: false });
  producers.push(ws, http);
  await until("load established", () => ws.stats.ackedUnits >= 2 && http.stats.ackedUnits >= 2, 20_000);

  freezePostgres(fx.db);
  let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  let stopMs = -1;
  try {
    await sleep(300);
    const termAt = Date.now();
    d.child.kill("SIGTERM");
    const limit = stopTimeout + 5000;
    exit = await Promise.race([d.exited, sleep(limit).then(() => null)]);
    stopMs = Date.now() - termAt;
  } finally {
    thawPostgres();
  }
  console.log(
    `[faults] sigterm/frozen database: exit ${exit ? (exit.code ?? exit.signal) : "none"} after ${stopMs} ms (STOP_TIMEOUT_MS ${stopTimeout})`,
  );
  if (!exit) await d.exited; // PostgreSQL is back: the drain can finish now
  await Promise.all([ws, http].map((p) => p.stop()));
  c.socket.terminate();
  const check = await checkStored(fx.db.url, allAckedIds([ws, http]));
  assert.equal(check.missing, 0, "nothing acknowledged is missing");
  assert.ok(exit !== null, `the daemon had not exited ${stopTimeout + 5000} ms after SIGTERM (STOP_TIMEOUT_MS ${stopTimeout})`);
  // The timeout itself plus process start-to-exit slack on a busy machine.
  assert.ok(stopMs < stopTimeout + 1000, `exited after ${stopMs} ms`);
  assert.equal(exit.code, 1, "a drain cut short is not a clean stop");
  assert.ok(
    d.output.some((l) => l.includes("drain did not finish within the stop timeout")),
    "the log says why",
  );
  assert.ok(ws.unackedIds().length + http.unackedIds().length > 0, "work was abandoned unacknowledged, not faked");
});

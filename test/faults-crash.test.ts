/**
 * Issue 6 item 3, crash safety (docs/storage.md, Durability and failure: "An acknowledged record survives kill -9 of the daemon at any
 * moment"): three rounds of start daemon → WebSocket and HTTP load → SIGKILL after a random 0.5–2.5 s →
 * restart, on one database, with a random group-commit age per round (so the kill lands in different
 * phases of a batch). After every round each acknowledged event is stored exactly once. At the end a fresh
 * daemon takes every event that was sent but never acknowledged, resent with the same ids as an SDK would:
 * each is answered (stored, or reported as a duplicate when the kill had hit after its commit), and every
 * event ever sent is then stored exactly once.
 *
 * The timing is random from a seed printed at the start; FAULTS_SEED=<seed> replays a run.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { event, post } from "./harness";
import {
  allAckedIds,
  checkStored,
  doubledWithPrefix,
  httpProducer,
  prng,
  sleep,
  testSeed,
  total,
  until,
  wsProducer,
  faultFixture,
} from "./faults-helpers";

/** A database; the test starts (and kills) its daemons through fx. */
const fx = faultFixture();
const { producers } = fx;

const ROUNDS = 3;

test(`SIGKILL at a random moment under load, ${ROUNDS} rounds: every acknowledged event is stored exactly once, and resending the unacknowledged ones stores each exactly once`, async () => {
  const seed = testSeed("crash rounds");
  const random = prng(seed);
  const unacked: string[] = [];
  const rounds: string[] = [];
  let ackedTotal = 0;
  const ackedIdsAll: string[] = [];

  for (let round = 1; round <= ROUNDS; round++) {
    const batchTimeoutMs = [5, 50, 250][Math.floor(random() * 3)];
    const killAfterMs = Math.round(500 + random() * 2000);
    const d = await fx.startDaemon({ env: { BATCH_TIMEOUT_MS: String(batchTimeoutMs) } });
    const prefix = `crash${round}`;
    const ps = [
      ...Array.from({ length: 4 }, (_, i) => wsProducer(d.wsBase, { prefix: `${prefix}-w${i}`, perUnit: 50, resend: false })),
      ...Array.from({ length: 3 }, (_, i) => httpProducer(d.base, { prefix: `${prefix}-h${i}`, perUnit: 100, resend: false })),
    ];
    producers.push(...ps);
    await until(
      `round ${round}: load established`,
      () => ps.every((p) => p.stats.ackedUnits >= 2),
      30_000,
      20,
      () => JSON.stringify(total(ps).outcomes),
    );
    const loadFrom = Date.now();
    const ackedAtLoad = total(ps).ackedEvents;
    await sleep(killAfterMs);
    const killed = await d.kill("SIGKILL");
    const loadMs = Date.now() - loadFrom;
    assert.equal(killed.signal, "SIGKILL");
    // Without resend every producer ends when it loses its connection.
    await Promise.race([Promise.all(ps.map((p) => p.done)), sleep(15_000)]);
    await Promise.all(ps.map((p) => p.stop()));

    const t = total(ps);
    assert.deepEqual(t.protocolErrors, [], `round ${round}`);
    const roundUnacked = ps.flatMap((p) => p.unackedIds());
    assert.ok(roundUnacked.length > 0, `round ${round}: the kill hit while work was in flight`);
    const check = await checkStored(fx.db.url, allAckedIds(ps));
    assert.equal(check.checked, t.ackedEvents);
    assert.equal(check.missing, 0, `round ${round} (seed ${seed}): acknowledged but missing after kill -9: ${check.missingSample}`);
    assert.equal(check.doubled, 0, `round ${round}: stored twice: ${check.doubledSample}`);
    const rate = Math.round(((t.ackedEvents - ackedAtLoad) / loadMs) * 1000);
    rounds.push(
      `round ${round}: BATCH_TIMEOUT_MS=${batchTimeoutMs}, killed after ${killAfterMs} ms at ${rate} events/s; ${t.ackedEvents} acked, ${roundUnacked.length} in flight, lost 0`,
    );
    ackedTotal += t.ackedEvents;
    for (const id of allAckedIds(ps)) ackedIdsAll.push(id);
    unacked.push(...roundUnacked);
  }

  // A daemon after the last kill: producers resend what was never acknowledged, with the same ids.
  const d = await fx.startDaemon();
  let stored = 0;
  let duplicates = 0;
  for (let i = 0; i < unacked.length; i += 500) {
    const ids = unacked.slice(i, i + 500);
    const res = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(ids.map((id) => event(id))));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.accepted + res.json.duplicates, ids.length);
    stored += res.json.accepted;
    duplicates += res.json.duplicates;
  }
  const everything = await checkStored(fx.db.url, [...ackedIdsAll, ...unacked]);
  assert.equal(everything.checked, ackedTotal + unacked.length, "ids are unique across rounds");
  assert.equal(everything.missing, 0);
  assert.equal(everything.doubled, 0);
  assert.deepEqual(await doubledWithPrefix(fx.db, "crash"), [], "nothing stored twice");
  const { code } = await d.stop();
  assert.equal(code, 0);
  for (const line of rounds) console.log(`[faults] crash ${line}`);
  console.log(
    `[faults] crash: seed ${seed}; ${ROUNDS} SIGKILLs; ${ackedTotal} events acknowledged, lost 0, doubled 0; ` +
      `${unacked.length} in flight at the kills, resent: ${duplicates} had been committed before the kill (reported as duplicates), ${stored} stored now; every event exactly once`,
  );
});

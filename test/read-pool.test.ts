/**
 * The read pool (docs/http-api.md#reading-back) against the real daemon and PostgreSQL: with one read
 * connection and no waiting room, a read stuck on a lock is cancelled by the statement timeout (503), a
 * second read meanwhile is refused at once (503), and ingest goes on committing the whole time.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import pg from "pg";
import { useTestDb } from "./fixture";
import { event, get, post, ROOT } from "./harness";
import { tempDir } from "./security-helpers";

const fx = useTestDb();
const dir = tempDir("ingestd-read-pool-");
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test("a slow read times out, a read beyond the pool is refused at once, ingest is not held up", async () => {
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
  config.reads = { poolSize: 1, statementTimeoutMs: 600, maxWaiting: 0 };
  fs.writeFileSync(path.join(dir, "ingestd.json"), JSON.stringify(config));
  const daemon = await fx.startDaemon({ env: { INGESTD_CONFIG: path.join(dir, "ingestd.json"), WORKERS: "1" } });
  // Warm the read connection so the stuck read below holds the pool's only one.
  assert.equal((await get(`${daemon.base}/v1/streams/events/records`)).status, 200);

  const locker = new pg.Client({ connectionString: fx.db.url });
  await locker.connect();
  fx.teardown(() => locker.end());
  await locker.query("BEGIN");
  await locker.query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
  const started = Date.now();
  const stuck = get(`${daemon.base}/v1/streams/orders/records`).then((r) => ({ ...r, ms: Date.now() - started }));
  await new Promise((r) => setTimeout(r, 150));

  const refused = await get(`${daemon.base}/v1/streams/events/records`);
  assert.equal(refused.status, 503, refused.text);
  assert.equal(refused.json.error, "read_unavailable");
  assert.match(refused.json.message, /too many reads waiting/);
  assert.equal(refused.headers.get("retry-after"), "1");

  const sendAt = Date.now();
  const sent = await post(`${daemon.base}/v1/streams/events/events`, JSON.stringify([event("rp-1"), event("rp-2")]));
  const committedAt = Date.now() - started;
  assert.equal(sent.status, 200, sent.text);

  const slow = await stuck;
  assert.equal(slow.status, 503, slow.text);
  assert.match(slow.json.message, /longer than 600 ms and was cancelled/);
  assert.ok(slow.ms >= 550, `cancelled after ${slow.ms} ms`);
  // An order, not a time limit: ingest waiting on the read pool would answer only after the read let go.
  assert.ok(
    committedAt < slow.ms,
    `ingest committed ${committedAt} ms in (sent at ${sendAt - started}), the stuck read cancelled at ${slow.ms}: ingest waited for the read pool`,
  );
  await locker.query("ROLLBACK");

  const readBack = await get(`${daemon.base}/v1/streams/events/records?order=asc`);
  assert.equal(readBack.status, 200);
  assert.deepEqual(
    readBack.json.records.map((r: any) => r.event_id),
    ["rp-1", "rp-2"],
  );
  const { rows } = await fx.db.query(
    "SELECT application_name, count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'ingestd-read' GROUP BY 1",
  );
  assert.equal(rows[0].n, 1, "the read pool holds one connection, its own");
});

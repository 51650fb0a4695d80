/**
 * Dead-letter replay (docs/http-api.md#replaying-dead-letters) against the real daemon and PostgreSQL: a
 * stream that refuses unknown fields, records refused for one, a replay that still rejects them (kept as new
 * dead letters), then the daemon started again with `streams.logs.unknownFields: "ignore"`: the replay
 * stores them and counts them, and a second replay submits nothing. By ids and by time; an unreadable body
 * replayed and kept again; replays at once on two daemons storing each record once; bad requests get a 400
 * naming the field.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { useTestDb } from "./fixture";
import { get, post, ROOT, type Daemon } from "./harness";
import { tempDir } from "./security-helpers";

const fx = useTestDb();
const dir = tempDir("ingestd-replay-");
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The shipped configuration with `logs` ignoring unknown fields. */
function ignoringConfig(): string {
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
  config.streams = { logs: { unknownFields: "ignore" } };
  const file = path.join(dir, "ingestd.json");
  fs.writeFileSync(file, JSON.stringify(config));
  return file;
}

const log = (message: string, extra: Record<string, unknown> = {}) => ({ service_name: "replay", severity: "INFO", message, ...extra });

async function replay(daemon: Daemon, body: unknown): Promise<{ status: number; json: any }> {
  const res = await post(`${daemon.base}/v1/dead-letters/replay`, JSON.stringify(body));
  return { status: res.status, json: res.json };
}

/**
 * PostgreSQL's clock now: a `since` that takes this test's dead letters and none an earlier test left (a
 * still-rejected record replayed there is kept again as a new dead letter, which a slack of a second could
 * catch).
 */
async function databaseNow(): Promise<string> {
  const { rows } = await fx.db.query("SELECT clock_timestamp() AS t");
  return (rows[0].t as Date).toISOString();
}

async function storedMessages(): Promise<string[]> {
  const { rows } = await fx.db.query("SELECT message FROM logs WHERE service_name = 'replay' ORDER BY message");
  return rows.map((r) => r.message);
}

test("records refused for an unknown field are stored once the stream ignores it, and counted; a second replay doubles nothing", async () => {
  const since = await databaseNow();
  let daemon = await fx.startDaemon({ env: { WORKERS: "1" } });
  const body = [log("ok-1"), log("late-1", { host: "a" }), log("late-2", { host: "b" }), log("late-3", { region: "eu" })]
    .map((r) => JSON.stringify(r))
    .join("\n");
  const sent = await post(`${daemon.base}/v1/streams/logs/events`, body, "application/x-ndjson");
  assert.equal(sent.status, 207, sent.text);
  assert.equal(sent.json.rejected, 3);

  // Replayed while the stream still refuses: still rejected, and kept again (as new dead letters).
  const still = await replay(daemon, { stream: "logs", since });
  assert.equal(still.status, 200, JSON.stringify(still.json));
  assert.deepEqual([still.json.replayed, still.json.accepted, still.json.rejected, still.json.more], [3, 0, 3, false]);
  assert.ok(still.json.errors.every((e: any) => typeof e.id === "number" && /unknown field/.test(e.message)));
  const { rows: letters } = await fx.db.query(
    "SELECT source, replayed_at IS NOT NULL AS replayed FROM ingest_dead_letters WHERE stream = 'logs' ORDER BY id",
  );
  assert.deepEqual(
    letters.map((l) => `${l.source}:${l.replayed}`),
    ["http:true", "http:true", "http:true", "replay:false", "replay:false", "replay:false"],
  );
  await daemon.stop();

  daemon = await fx.startDaemon({ env: { WORKERS: "1", INGESTD_CONFIG: ignoringConfig() } });
  const done = await replay(daemon, { stream: "logs", since });
  assert.equal(done.status, 200, JSON.stringify(done.json));
  assert.deepEqual([done.json.replayed, done.json.accepted, done.json.rejected, done.json.errors.length], [3, 3, 0, 0]);
  assert.deepEqual(await storedMessages(), ["late-1", "late-2", "late-3", "ok-1"]);

  const again = await replay(daemon, { stream: "logs", since });
  assert.deepEqual([again.status, again.json.replayed, again.json.accepted], [200, 0, 0]);
  assert.deepEqual(await storedMessages(), ["late-1", "late-2", "late-3", "ok-1"]);

  // By id: a record refused for another reason stays rejected; the id is taken once.
  const bad = await post(`${daemon.base}/v1/streams/logs/events`, JSON.stringify(log("loud", { severity: "LOUD" })));
  assert.equal(bad.status, 422);
  const listed = await get(`${daemon.base}/v1/dead-letters?stream=logs&limit=1`);
  const id = listed.json.records[0].id;
  assert.match(listed.json.records[0].raw, /LOUD/);
  const byId = await replay(daemon, { stream: "logs", ids: [id] });
  assert.deepEqual([byId.json.replayed, byId.json.accepted, byId.json.rejected], [1, 0, 1]);
  assert.equal(byId.json.errors[0].id, id);
  assert.equal(byId.json.errors[0].path, "severity");
  const twice = await replay(daemon, { stream: "logs", ids: [id] });
  assert.equal(twice.json.replayed, 0);
  await daemon.stop();
});

test("bad replay requests get a 400 naming the field; an unknown stream 404", async () => {
  const daemon = await fx.startDaemon({ env: { WORKERS: "1" } });
  for (const [body, field] of [
    ["{", "body"],
    [JSON.stringify({ ids: [1] }), "stream"],
    [JSON.stringify({ stream: "logs" }), "ids / since"],
    [JSON.stringify({ stream: "logs", ids: [1], since: "2026-01-01T00:00:00Z" }), "ids / since"],
    [JSON.stringify({ stream: "logs", ids: ["x"] }), "ids\\[0\\]"],
    [JSON.stringify({ stream: "logs", ids: [] }), "ids"],
    [JSON.stringify({ stream: "logs", since: "yesterday" }), "since"],
    [JSON.stringify({ stream: "logs", since: "2026-01-01T00:00:00Z", all: true }), "all"],
  ] as const) {
    const res = await post(`${daemon.base}/v1/dead-letters/replay`, body);
    assert.equal(res.status, 400, body);
    assert.match(res.json.message, new RegExp(`^${field}: `), body);
  }
  const unknown = await replay(daemon, { stream: "nope", since: "2026-01-01T00:00:00Z" });
  assert.equal(unknown.status, 404);

  // A body that could not be read at all is replayed as that body: still unreadable, kept again.
  const since = await databaseNow();
  const unreadable = await post(`${daemon.base}/v1/streams/events/events`, '{"event_id": "x",\n "broken"');
  assert.equal(unreadable.status, 400);
  const again = await replay(daemon, { stream: "events", since });
  assert.deepEqual([again.status, again.json.replayed, again.json.rejected, again.json.accepted], [200, 1, 1, 0]);
  const { rows } = await fx.db.query(
    "SELECT source, raw, replayed_at IS NOT NULL AS replayed FROM ingest_dead_letters WHERE stream = 'events' AND received_at >= $1 ORDER BY id",
    [since],
  );
  assert.deepEqual(
    rows.map((r) => [r.source, r.replayed, r.raw]),
    [
      ["http", true, '{"event_id": "x",\n "broken"'],
      ["replay", false, '{"event_id": "x",\n "broken"'],
    ],
  );
  await daemon.stop();
});

test("replays at once, on one daemon or two, store each dead letter once", async () => {
  const first = await fx.startDaemon({ env: { WORKERS: "1" } });
  const since = await databaseNow();
  const body = Array.from({ length: 40 }, (_, i) => JSON.stringify(log(`twice-${i}`, { host: "h" }))).join("\n");
  assert.equal((await post(`${first.base}/v1/streams/logs/events`, body, "application/x-ndjson")).status, 422);
  await first.stop();
  const env = { WORKERS: "1", INGESTD_CONFIG: ignoringConfig() };
  const [a, b] = await Promise.all([fx.startDaemon({ env }), fx.startDaemon({ env })]);
  const answers = await Promise.all([a, b, a, b].map((d) => replay(d, { stream: "logs", since })));
  for (const r of answers) assert.ok(r.status === 200 || r.status === 409, JSON.stringify(r.json));
  assert.equal(
    answers.reduce((n, r) => n + (r.json.accepted ?? 0), 0),
    40,
    JSON.stringify(answers.map((r) => r.json)),
  );
  const { rows } = await fx.db.query("SELECT count(*)::int AS n, count(DISTINCT message)::int AS d FROM logs WHERE message LIKE 'twice-%'");
  assert.deepEqual(rows[0], { n: 40, d: 40 });
  const late = await replay(a, { stream: "logs", since });
  assert.deepEqual([late.status, late.json.replayed], [200, 0]);
  await Promise.all([a.stop(), b.stop()]);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { useDaemon } from "./fixture";
import { event, post } from "./harness";

const fx = useDaemon();

test("a JSON array lands as rows and is answered 200 after commit", async () => {
  const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("s1"), event("s2")]));
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.accepted, 2);
  const rows = await fx.db.query("SELECT event_id FROM events WHERE event_id IN ('s1','s2') ORDER BY event_id");
  assert.deepEqual(
    rows.rows.map((r) => r.event_id),
    ["s1", "s2"],
  );
});

test("SIGTERM drains and exits 0", async () => {
  const { code } = await fx.daemon.stop();
  assert.equal(code, 0);
});

/**
 * Upserts (docs/storage.md#upserts) against the real daemon and PostgreSQL, on seed 002's `users` and
 * `countries`: a changed record replaces the stored row, an unchanged one is a duplicate, the last version
 * of a key within one request wins, concurrent requests on the same keys from two workers all commit, and
 * `GET /users` / `GET /countries` answer from the tables.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { useDaemon } from "./fixture";
import { get, post } from "./harness";

const fx = useDaemon({ env: { WORKERS: "2" } });

const user = (id: number, extra: Record<string, unknown> = {}) => ({
  id,
  name: `User ${id}`,
  username: `user${id}`,
  email: `user${id}@example.com`,
  address: {
    street: "Kulas Light",
    suite: "Apt. 556",
    city: "Gwenborough",
    zipcode: "92998-3874",
    geo: { lat: "-37.3159", lng: "81.1496" },
  },
  phone: "1-770-736-8031 x56442",
  website: "hildegard.org",
  company: { name: "Romaguera-Crona", catchPhrase: "Multi-layered client-server neural-net", bs: "harness real-time e-markets" },
  ...extra,
});

async function send(stream: string, records: unknown[]): Promise<any> {
  const res = await post(`${fx.daemon.base}/v1/streams/${stream}/events`, JSON.stringify(records));
  assert.ok(res.status === 200 || res.status === 207, res.text);
  return res.json;
}

test("a changed user replaces the stored row, an unchanged one is a duplicate", async () => {
  const first = await send("users", [user(1), user(2), user(3)]);
  assert.deepEqual([first.accepted, first.duplicates, first.rejected], [3, 0, 0]);
  const { rows: before } = await fx.db.query("SELECT id, email, ingested_at FROM users ORDER BY id");
  const again = await send("users", [user(1), user(2, { email: "new2@example.com" }), user(3)]);
  assert.deepEqual([again.accepted, again.duplicates, again.rejected], [1, 2, 0]);
  const { rows } = await fx.db.query("SELECT id, email, company, ingested_at FROM users ORDER BY id");
  assert.deepEqual(
    rows.map((r) => [r.id, r.email]),
    [
      [1, "user1@example.com"],
      [2, "new2@example.com"],
      [3, "user3@example.com"],
    ],
  );
  assert.equal(rows[1].company.name, "Romaguera-Crona");
  assert.ok(rows[1].ingested_at > before[1].ingested_at, "the replaced row carries its new arrival time");
  assert.equal(rows[0].ingested_at.getTime(), before[0].ingested_at.getTime(), "an unchanged row is left alone");
  // A nested change counts as a change.
  const nested = await send("users", [user(3, { address: { city: "Wisokyburgh" } })]);
  assert.deepEqual([nested.accepted, nested.duplicates], [1, 0]);
  // A record the type refuses is rejected and the row stays.
  const bad = await post(`${fx.daemon.base}/v1/streams/users/events`, JSON.stringify([user(1, { email: "not an email" })]));
  assert.equal(bad.status, 422);
  assert.equal((await fx.db.query("SELECT email FROM users WHERE id = 1")).rows[0].email, "user1@example.com");
});

test("within one request the last version of a key wins; earlier ones count as duplicates", async () => {
  const res = await send("users", [user(10, { name: "first" }), user(11), user(10, { name: "second" })]);
  assert.deepEqual([res.accepted, res.duplicates], [2, 1]);
  assert.equal((await fx.db.query("SELECT name FROM users WHERE id = 10")).rows[0].name, "second");
});

test("concurrent requests upserting the same keys in different orders all commit (two workers)", async () => {
  const ids = Array.from({ length: 40 }, (_, i) => 100 + i);
  const requests = Array.from({ length: 12 }, (_, n) => {
    const order = n % 2 === 0 ? ids : [...ids].reverse();
    return post(`${fx.daemon.base}/v1/streams/users/events`, JSON.stringify(order.map((id) => user(id, { phone: `v${n}` }))));
  });
  const answers = await Promise.all(requests);
  for (const a of answers) assert.equal(a.status, 200, a.text);
  const { rows } = await fx.db.query("SELECT count(*)::int AS n, count(DISTINCT phone)::int AS versions FROM users WHERE id >= 100");
  assert.equal(rows[0].n, 40);
  assert.ok(rows[0].versions >= 1);
  const accepted = answers.reduce((sum, a) => sum + a.json.accepted + a.json.duplicates, 0);
  assert.equal(accepted, 12 * 40);
});

test("countries: currency changes replace; GET /countries and GET /users answer from the tables", async () => {
  const countries = [
    { code: "FR", name: "France", capital: "Paris", currency: "EUR", continent: "Europe" },
    { code: "JP", name: "Japan", capital: "Tokyo", currency: "JPY", continent: "Asia" },
    { code: "AQ", name: "Antarctica", capital: null, currency: null, continent: "Antarctica" },
  ];
  assert.equal((await send("countries", countries)).accepted, 3);
  const changed = await send("countries", [{ ...countries[0], currency: "FRF" }, countries[1]]);
  assert.deepEqual([changed.accepted, changed.duplicates], [1, 1]);
  const europe = await get(`${fx.daemon.base}/countries?continent=Europe`);
  assert.equal(europe.status, 200, europe.text);
  assert.deepEqual(
    europe.json.records.map((c: any) => [c.code, c.currency]),
    [["FR", "FRF"]],
  );
  const all = await get(`${fx.daemon.base}/countries?order=asc&limit=2`);
  assert.equal(all.json.records.length, 2);
  assert.ok(all.json.next_cursor);
  const rest = await get(`${fx.daemon.base}/countries?order=asc&limit=2&cursor=${all.json.next_cursor}`);
  assert.equal(rest.json.records.length, 1);
  assert.equal(rest.json.next_cursor, null);
  const codes = [...all.json.records, ...rest.json.records].map((c: any) => c.code).sort();
  assert.deepEqual(codes, ["AQ", "FR", "JP"]);
  const one = await get(`${fx.daemon.base}/users?id=2`);
  assert.equal(one.status, 200);
  assert.equal(one.json.records[0].email, "new2@example.com");
  const bad = await get(`${fx.daemon.base}/users?email=x`);
  assert.equal(bad.status, 400);
  assert.match(bad.json.message, /^email: not an indexed column of stream users; filter on id/);
});

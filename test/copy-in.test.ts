/**
 * COPY in one round trip (workers/commit/copy-in.ts) against a real PostgreSQL: several statements and COPYs in
 * one Query with their data sent at once, and the connection still in step after a COPY fails mid-message.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import pg from "pg";
import { copyIn } from "../workers/commit/copy-in";
import { useTestDb } from "./fixture";

const fx = useTestDb();

async function withClient<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: fx.db.url });
  await c.connect();
  try {
    return await work(c);
  } finally {
    await c.end();
  }
}

const rows = (...lines: string[]) => Buffer.from(lines.map((l) => `${l}\n`).join(""));

describe("COPY in one round trip", () => {
  test("BEGIN, two COPYs and COMMIT in one Query: both tables hold their rows, in one transaction", async () => {
    await withClient(async (c) => {
      await c.query("CREATE TABLE ci_a (n integer PRIMARY KEY, t text); CREATE TABLE ci_b (n integer)");
      await copyIn(c, "BEGIN; COPY ci_a FROM STDIN; COPY ci_b FROM STDIN; COMMIT", [
        rows("1\tone", "2\ttwo", "3\tcafé 🙂"),
        rows("7", "8"),
      ]);
      const a = await c.query("SELECT n, t, xmin::text AS x FROM ci_a ORDER BY n");
      assert.deepEqual(
        a.rows.map((r) => [r.n, r.t]),
        [
          [1, "one"],
          [2, "two"],
          [3, "café 🙂"],
        ],
      );
      const b = await c.query("SELECT n, xmin::text AS x FROM ci_b ORDER BY n");
      assert.deepEqual(
        b.rows.map((r) => r.n),
        [7, 8],
      );
      assert.equal(new Set([...a.rows, ...b.rows].map((r) => r.x)).size, 1, "one transaction wrote both");
      // An empty payload is a COPY of no rows.
      await copyIn(c, "COPY ci_b FROM STDIN", [Buffer.alloc(0)]);
      assert.equal((await c.query("SELECT count(*)::int AS n FROM ci_b")).rows[0].n, 2);
    });
  });

  test("a row refused by the first COPY: the error names its line, nothing after it ran, the COPYs' data is dropped and the connection answers the next Query", async () => {
    await withClient(async (c) => {
      await c.query("CREATE TABLE ci_c (n integer PRIMARY KEY); CREATE TABLE ci_d (n integer)");
      await c.query("INSERT INTO ci_c VALUES (2)");
      await c.query("BEGIN");
      const err = await copyIn(c, "SAVEPOINT s; COPY ci_c FROM STDIN; RELEASE SAVEPOINT s; COPY ci_d FROM STDIN; COMMIT", [
        rows("1", "2", "3"),
        rows("10", "11"),
      ]).then(
        () => null,
        (e: pg.DatabaseError) => e,
      );
      assert.ok(err !== null, "the duplicate key fails the Query");
      assert.equal(err.code, "23505");
      assert.match(err.where ?? "", /COPY ci_c, line 2/);
      // The transaction is open and failed (the COMMIT never ran); its savepoint is there to roll back to.
      await c.query("ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s");
      await copyIn(c, "COPY ci_d FROM STDIN; COMMIT", [rows("12")]);
      const d = await c.query("SELECT array_agg(n ORDER BY n) AS ns FROM ci_d");
      assert.deepEqual(d.rows[0].ns, [12], "only the rows sent after the rollback are stored");
      const cRows = await c.query("SELECT array_agg(n ORDER BY n) AS ns FROM ci_c");
      assert.deepEqual(cRows.rows[0].ns, [2]);
      assert.equal((await c.query("SELECT 41 + 1 AS v")).rows[0].v, 42, "the connection is in step");
    });
  });

  test("a malformed statement before the COPY: the Query fails and its data is dropped, not read as commands", async () => {
    await withClient(async (c) => {
      await c.query("CREATE TABLE ci_e (t text)");
      // Data that would be harmful if it were read as a Query.
      const err = await copyIn(c, "SELEC 1; COPY ci_e FROM STDIN", [rows("DROP TABLE ci_e")]).then(
        () => null,
        (e: pg.DatabaseError) => e,
      );
      assert.equal(err?.code, "42601");
      assert.equal((await c.query("SELECT count(*)::int AS n FROM ci_e")).rows[0].n, 0);
    });
  });
});

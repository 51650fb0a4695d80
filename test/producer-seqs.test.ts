/**
 * The commit side of producer sessions, deterministically: one group-commit batch on a real PostgreSQL
 * holding frames of two producers, one of them partly fenced, partly already committed and partly out of
 * order. Only the frames that are each session's next seq under its current epoch are stored; the rest of
 * the batch commits; each session's committed_seq lands in the same transaction.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import pg from "pg";
import { streams } from "../config/streams";
import { ensureSchema } from "../src/storage/schema";
import { batchesCopySql, commitTargets, deadLettersCopySql, markReplayedSql } from "../workers/commit/commit-targets";
import { CopyWriter } from "../workers/commit/copy-writer";
import { GroupCommitter, type TaskWork } from "../workers/commit/group-commit";
import { producerSql, type SessionMark } from "../workers/commit/producer-seqs";
import { CopyRows } from "../workers/records/copy-rows";
import { useTestDb } from "./fixture";

/** A database with the schema; the tests drive a GroupCommitter on it directly. */
const fx = useTestDb();
let writer: CopyWriter;

fx.setup(async () => {
  const client = new pg.Client({ connectionString: fx.db.url });
  await client.connect();
  await ensureSchema(client, "public", streams);
  await client.end();
  writer = new CopyWriter({ connectionString: fx.db.url, applicationName: "producer-seqs-test", stallTimeoutMs: 5000 });
});

fx.teardown(() => writer?.close());

/** A group committer on the test's writer whose batches age after 50 ms: work added together shares a transaction. */
function committer(): GroupCommitter {
  return new GroupCommitter(writer, {
    batchSize: 1_000_000,
    maxBatchBytes: 1 << 30,
    batchTimeoutMs: 50,
    batchesCopySql: batchesCopySql("public"),
    deadLettersCopySql: deadLettersCopySql("public"),
    markReplayedSql: markReplayedSql("public"),
    producers: producerSql("public"),
  });
}

test("one batch: fenced, already committed and out-of-order frames are left out, the rest commits with each session's seq", async () => {
  await fx.db.query(
    "INSERT INTO ingest_producers (stream, producer, epoch, committed_seq) VALUES ('logs', 'P', 2, 5), ('logs', 'Q', 1, 0)",
  );
  const logs = commitTargets("public", streams, []).find((t) => t.stream === "logs")!;
  const commits = committer();
  const work = (producer: string, epoch: number, seq: number): TaskWork => {
    const session: SessionMark = { stream: "logs", producer, epoch, seq };
    return {
      priority: 0,
      parts: [{ target: logs, rows: CopyRows.encode([`svc\tINFO\t${producer}-${epoch}-${seq}\t\\N\t2026-12-03T00:00:00Z\n`]) }],
      bytes: 60,
      session,
      finalize: () => ({ batchRow: null, deadLetters: [] }),
    };
  };
  // All added before the batch ages, so they share one transaction.
  const results = await Promise.all([
    commits.add(work("P", 1, 6)), // an older epoch of P: fenced
    commits.add(work("Q", 1, 1)),
    commits.add(work("Q", 1, 2)),
    commits.add(work("P", 2, 5)), // P's seq 5 is committed already
    commits.add(work("P", 2, 6)),
    commits.add(work("Q", 1, 4)), // Q's seq 3 is missing
  ]);
  assert.deepEqual(
    results.map((r) => r.skipped),
    ["superseded", null, null, "committed", null, "out_of_order"],
  );
  assert.equal(new Set(results.map((r) => r.committedAt)).size, 1, "not one transaction");
  const rows = await fx.db.query("SELECT message FROM logs ORDER BY message");
  assert.deepEqual(
    rows.rows.map((r) => r.message),
    ["P-2-6", "Q-1-1", "Q-1-2"],
  );
  const state = await fx.db.query(
    "SELECT producer, epoch::int, committed_seq::int FROM ingest_producers WHERE stream = 'logs' ORDER BY producer",
  );
  assert.deepEqual(state.rows, [
    { producer: "P", epoch: 2, committed_seq: 6 },
    { producer: "Q", epoch: 1, committed_seq: 2 },
  ]);
});

test("a plain stream's batch commits in one round trip; a row PostgreSQL refuses fails that Query and the batch is redone with row isolation", async () => {
  const logs = commitTargets("public", streams, []).find((t) => t.stream === "logs")!;
  const commits = committer();
  // The Queries the commits send, read off the worker's real connection.
  const client = await writer.connection();
  const sent: string[] = [];
  const query = client.query.bind(client) as (...a: unknown[]) => unknown;
  (client as unknown as { query: (...a: unknown[]) => unknown }).query = (q: unknown, ...rest: unknown[]) => {
    sent.push(typeof q === "string" ? q : String((q as { text?: string }).text ?? ""));
    return query(q, ...rest);
  };
  const task = (message: string, time = "2026-12-03T00:00:00Z"): TaskWork => ({
    priority: 0,
    parts: [{ target: logs, rows: CopyRows.encode([`svc\tINFO\t${message}\t\\N\t${time}\n`]) }],
    bytes: 60,
    finalize: () => ({ batchRow: null, deadLetters: [] }),
  });
  await Promise.all([commits.add(task("rt-1")), commits.add(task("rt-2"))]);
  assert.equal(sent.length, 1, `one Query for the batch: ${JSON.stringify(sent)}`);
  assert.match(sent[0], /^BEGIN; COPY .+ FROM STDIN; COMMIT$/);

  sent.length = 0;
  const [good, bad] = await Promise.all([commits.add(task("rt-3")), commits.add(task("rt-4", "not a time"))]);
  assert.deepEqual(good.outcomes[0].failures, []);
  assert.equal(bad.outcomes[0].failures.length, 1, "the refused row is the failing task's");
  assert.equal(bad.outcomes[0].failures[0].code, "22007");
  assert.ok(sent.length > 2, "the failed Query, then the batch again row by row");
  const rows = await fx.db.query("SELECT message FROM logs WHERE message LIKE 'rt-%' ORDER BY message");
  assert.deepEqual(
    rows.rows.map((r) => r.message),
    ["rt-1", "rt-2", "rt-3"],
  );
  (client as unknown as { query: unknown }).query = query;
});

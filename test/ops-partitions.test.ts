/**
 * `ingestd partitions list | create | drop` against a real database whose schema the daemon created.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { useTestDb } from "./fixture";
import { CLI, ROOT } from "./harness";
import { configEnv } from "./ops-tools";

const fx = useTestDb();

fx.setup(async () => {
  // The daemon creates the tables and this month's and next month's partitions, then goes away.
  const daemon = await fx.startDaemon();
  assert.equal((await daemon.stop()).code, 0);
});

function partitions(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, "partitions", ...args], {
    cwd: ROOT,
    env: configEnv({ DATABASE_URL: fx.db.url }),
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const thisMonth = new Date().toISOString().slice(0, 7);

test("list shows the partitions the daemon created, create adds a month, drop removes old months", () => {
  const listed = partitions("list");
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, new RegExp(`^events\\s+events_p${thisMonth.replace("-", "_")}\\s+${thisMonth}\\s+\\d+ rows$`, "m"));
  assert.match(listed.stdout, /^events\s+events_default\s+default\s+\d+ rows$/m);

  const created = partitions("create", "2020-01");
  assert.equal(created.code, 0, created.stderr);
  assert.match(created.stdout, /created .*events_p2020_01/);
  assert.match(partitions("create", "2020-01").stdout, /nothing to create/);
  assert.match(partitions("list").stdout, /^events\s+events_p2020_01\s+2020-01\s+0 rows$/m);

  const dropped = partitions("drop", "--older-than", "1");
  assert.equal(dropped.code, 0, dropped.stderr);
  assert.match(dropped.stdout, /dropped .*events_p2020_01/);
  const after = partitions("list").stdout;
  assert.doesNotMatch(after, /events_p2020_01/);
  assert.match(after, new RegExp(`events_p${thisMonth.replace("-", "_")}`), "the current month is kept");
});

test("bad arguments are usage errors (exit 64)", () => {
  for (const args of [["create", "2020-13"], ["drop", "--older-than", "0"], ["drop"], []]) {
    const r = partitions(...args);
    assert.equal(r.code, 64, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /Usage: ingestd partitions/);
  }
});

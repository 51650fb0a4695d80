/**
 * Monthly partitions of the event tables (docs/storage.md, issue 4): where rows land (by tableoid), the partitions
 * the daemon creates at start, the functions of src/storage/partitions.ts that the schedule and the CLI use
 * (createPartitions, dropPartitionsOlderThan, listPartitions), retention by the daemon itself, and the
 * `ingestd partitions` command. Real daemon, real PostgreSQL.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import pg from "pg";
import { streams } from "../config/streams";
import {
  addMonths,
  createPartitions,
  dropPartitionsOlderThan,
  ensureMonthPartitions,
  listPartitions,
  monthLabel,
  monthOf,
  partitionName,
  type Month,
} from "../src/storage/partitions";
import { useDaemon } from "./fixture";
import { CLI, ROOT, event, post, waitFor } from "./harness";

const fx = useDaemon();
/** The test's own connection to fx.db. */
let client: pg.Client;
const extraClients: pg.Client[] = [];
fx.setup(async () => {
  client = new pg.Client({ connectionString: fx.db.url });
  await client.connect();
});
fx.teardown(async () => {
  for (const c of [client, ...extraClients]) await c?.end().catch(() => undefined);
});

/** The month the daemon started in; every month below is relative to it. */
const M = monthOf(new Date());
const rel = (n: number) => addMonths(M, n);
const PARTITIONED = ["events", "logs", "product_events"];

function startOf(m: Month): Date {
  return new Date(Date.UTC(m.year, m.month - 1, 1));
}

/** An ISO time `ms` milliseconds after the start of month m. */
function at(m: Month, ms = 0): string {
  return new Date(startOf(m).getTime() + ms).toISOString();
}

const DAY = 86_400_000;

async function partitionsOf(table: string): Promise<string[]> {
  const { rows } = await client.query(
    `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
      WHERE p.relname = $1 ORDER BY 1`,
    [table],
  );
  return rows.map((r) => r.relname);
}

/** event_id → partition the row is stored in. */
async function whereStored(prefix: string): Promise<Record<string, string>> {
  const { rows } = await client.query(`SELECT event_id, tableoid::regclass::text AS part FROM events WHERE event_id LIKE $1 || '%'`, [
    prefix,
  ]);
  return Object.fromEntries(rows.map((r) => [r.event_id, r.part]));
}

async function sendEvents(records: Record<string, unknown>[]) {
  const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(records));
  assert.equal(res.status, 200, res.text);
  return res.json;
}

function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: fx.db.url, LOG_LEVEL: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("partitions at start", () => {
  test("this month's and next month's partitions and a default partition exist for every partitioned stream", async () => {
    for (const table of PARTITIONED) {
      const parts = await partitionsOf(table);
      for (const name of [partitionName(table, M), partitionName(table, rel(1)), `${table}_default`])
        assert.ok(parts.includes(name), `${table}: ${name} in ${parts.join(", ")}`);
    }
    // The reference tables of the TPC-H streams are not partitioned.
    assert.deepEqual(await partitionsOf("orders"), []);
  });

  test("the indexes of docs/storage.md are on the parent, so every partition has them", async () => {
    const want: Record<string, string[]> = {
      events: ["(service_name, event_type, event_time)"],
      logs: ["(service_name, severity, logged_at)"],
      product_events: ["(user_id, event_time)", "(event_type, event_time)"],
    };
    for (const [table, indexes] of Object.entries(want)) {
      for (const part of [table, ...(await partitionsOf(table))]) {
        const { rows } = await client.query(`SELECT indexdef FROM pg_indexes WHERE tablename = $1`, [part]);
        for (const cols of indexes)
          assert.ok(
            rows.some((r) => r.indexdef.endsWith(cols)),
            `${part} has an index on ${cols}: ${rows.map((r) => r.indexdef).join("; ")}`,
          );
      }
    }
  });
});

describe("where rows land", () => {
  test("events across three months land in their month's partition, at the exact UTC boundaries; far past and far future land in the default", async () => {
    assert.deepEqual(
      await createPartitions(client, "public", streams, [rel(-1)]),
      PARTITIONED.map((t) => partitionName(t, rel(-1))),
    );
    const lastMs = (m: Month) => startOf(addMonths(m, 1)).getTime() - startOf(m).getTime() - 1;
    const cases: [string, string, string][] = [
      ["pt-prev-first", at(rel(-1)), partitionName("events", rel(-1))],
      ["pt-prev-mid", at(rel(-1), 10 * DAY), partitionName("events", rel(-1))],
      ["pt-prev-last", at(rel(-1), lastMs(rel(-1))), partitionName("events", rel(-1))],
      ["pt-this-first", at(M), partitionName("events", M)],
      ["pt-this-mid", at(M, 3 * DAY + 1234), partitionName("events", M)],
      ["pt-this-last", at(M, lastMs(M)), partitionName("events", M)],
      ["pt-next-first", at(rel(1)), partitionName("events", rel(1))],
      ["pt-next-last", at(rel(1), lastMs(rel(1))), partitionName("events", rel(1))],
      ["pt-after-next", at(rel(2)), "events_default"],
      ["pt-far-past", "2001-09-09T01:46:40Z", "events_default"],
      ["pt-far-future", "2100-01-01T00:00:00Z", "events_default"],
    ];
    // 02:00 on the 1st at +02:00 is 00:00 UTC: the first instant of next month.
    const offsetFirst = startOf(rel(1));
    const local = `${offsetFirst.getUTCFullYear()}-${String(offsetFirst.getUTCMonth() + 1).padStart(2, "0")}-01T02:00:00+02:00`;
    cases.push(["pt-next-offset", local, partitionName("events", rel(1))]);
    // 00:30 on the 1st at +01:00 is still the last half hour of the month before, in UTC.
    cases.push(["pt-this-offset", local.replace("T02:00:00+02:00", "T00:30:00+01:00"), partitionName("events", M)]);
    await sendEvents(cases.map(([id, timestamp]) => event(id, { timestamp })));
    assert.deepEqual(await whereStored("pt-"), Object.fromEntries(cases.map(([id, , part]) => [id, part])));
  });

  test("product_events by their epoch-ms time and logs by their receive time", async () => {
    const ids = { prev: randomUUID(), now: randomUUID(), old: randomUUID() };
    const product = (id: string, ms: number) => ({ event_id: id, user_id: "u", event_type: "t", event_time: ms, properties: {} });
    const res = await post(
      `${fx.daemon.base}/events`,
      JSON.stringify([product(ids.prev, startOf(rel(-1)).getTime() + 5), product(ids.now, Date.now()), product(ids.old, 1000)]),
    );
    assert.equal(res.status, 200, res.text);
    const { rows } = await client.query(
      `SELECT event_id::text AS id, tableoid::regclass::text AS part FROM product_events WHERE event_id = ANY($1::uuid[])`,
      [Object.values(ids)],
    );
    assert.deepEqual(Object.fromEntries(rows.map((r) => [r.id, r.part])), {
      [ids.prev]: partitionName("product_events", rel(-1)),
      [ids.now]: partitionName("product_events", monthOf(new Date())),
      [ids.old]: "product_events_default",
    });
    const logs = await post(
      `${fx.daemon.base}/v1/streams/logs/events`,
      JSON.stringify({ service_name: "part-logs", severity: "INFO", message: "m" }),
    );
    assert.equal(logs.status, 200, logs.text);
    const l = await client.query(`SELECT tableoid::regclass::text AS part FROM logs WHERE service_name = 'part-logs'`);
    assert.deepEqual(l.rows, [{ part: partitionName("logs", monthOf(new Date())) }]);
  });
});

describe("createPartitions / listPartitions", () => {
  test("creating a month whose rows sit in the default partition moves them into the new partition; dedup still knows them", async () => {
    const month = rel(-3);
    await sendEvents([
      event("mv-1", { timestamp: at(month, DAY) }),
      event("mv-2", { timestamp: at(month, 20 * DAY) }),
      event("mv-keep", { timestamp: "1999-12-31T23:59:59Z" }),
    ]);
    assert.deepEqual(await whereStored("mv-"), { "mv-1": "events_default", "mv-2": "events_default", "mv-keep": "events_default" });

    const created = await createPartitions(client, "public", streams, [month]);
    assert.deepEqual(
      created,
      PARTITIONED.map((t) => partitionName(t, month)),
    );
    const name = partitionName("events", month);
    assert.deepEqual(await whereStored("mv-"), { "mv-1": name, "mv-2": name, "mv-keep": "events_default" });
    assert.equal(
      Number((await client.query(`SELECT count(*) AS n FROM events WHERE event_id LIKE 'mv-%'`)).rows[0].n),
      3,
      "moved, not copied",
    );
    // The moved partition has the parent's indexes too.
    const idx = await client.query(`SELECT indexdef FROM pg_indexes WHERE tablename = $1`, [name]);
    assert.ok(
      idx.rows.some((r) => r.indexdef.endsWith("(service_name, event_type, event_time)")),
      "the moved partition is indexed",
    );

    const again = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("mv-1", { timestamp: at(month, DAY) })]));
    assert.equal(again.json.duplicates, 1);

    const list = await listPartitions(client, "public", streams);
    const entry = list.find((p) => p.partition === name);
    assert.deepEqual(entry, { stream: "events", partition: name, month: monthLabel(month), rows: 2 });
    assert.ok(list.some((p) => p.partition === "events_default" && p.month === null && p.rows >= 1));
    for (const table of PARTITIONED) assert.ok(list.some((p) => p.stream === table && p.partition === partitionName(table, M)));
  });

  test("creating is idempotent, and concurrent creators of one month never create it twice", async () => {
    assert.deepEqual(await createPartitions(client, "public", streams, [M, rel(1), rel(-3)]), []);
    const month = rel(6);
    const racers = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({ connectionString: fx.db.url });
        extraClients.push(c);
        await c.connect();
        return createPartitions(c, "public", streams, [month]);
      }),
    );
    assert.deepEqual(
      racers.flat().sort(),
      PARTITIONED.map((t) => partitionName(t, month)).sort(),
      "each partition reported created exactly once",
    );
    for (const table of PARTITIONED) assert.equal((await partitionsOf(table)).filter((p) => p === partitionName(table, month)).length, 1);
  });

  test("ensureMonthPartitions ahead of a month boundary creates the month after next", async () => {
    const created = await ensureMonthPartitions(client, "public", streams, startOf(rel(1)));
    assert.deepEqual(
      created,
      PARTITIONED.map((t) => partitionName(t, rel(2))),
    );
    // An event of that month written earlier sits in the default partition and was moved with it.
    assert.deepEqual(await whereStored("pt-after-next"), { "pt-after-next": partitionName("events", rel(2)) });
  });
});

describe("dropPartitionsOlderThan", () => {
  test("drops only the partitions older than N months; never the current month, the recent ones or the default", async () => {
    const old = [rel(-14), rel(-13), rel(-12)];
    await createPartitions(client, "public", streams, old);
    await sendEvents(old.map((m, i) => event(`old-${i}`, { timestamp: at(m, DAY) })));

    const dropped = await dropPartitionsOlderThan(client, "public", streams, 12);
    assert.deepEqual(dropped.sort(), PARTITIONED.flatMap((t) => [partitionName(t, rel(-14)), partitionName(t, rel(-13))]).sort());
    assert.deepEqual(Object.keys(await whereStored("old-")), ["old-2"], "the rows of dropped partitions are gone, the rest stay");
    for (const table of PARTITIONED) {
      const parts = await partitionsOf(table);
      for (const keep of [rel(-12), rel(-3), rel(-1), M, rel(1)])
        assert.ok(parts.includes(partitionName(table, keep)), `${table} keeps ${monthLabel(keep)}`);
      assert.ok(parts.includes(`${table}_default`));
    }

    // The tightest retention still keeps last month and this month.
    const tight = await dropPartitionsOlderThan(client, "public", streams, 1);
    assert.ok(tight.includes(partitionName("events", rel(-12))) && tight.includes(partitionName("events", rel(-3))), tight.join(", "));
    for (const table of PARTITIONED) {
      const parts = await partitionsOf(table);
      for (const keep of [rel(-1), M, rel(1)]) assert.ok(parts.includes(partitionName(table, keep)), `${table} keeps ${monthLabel(keep)}`);
    }
    assert.equal((await whereStored("pt-this-mid"))["pt-this-mid"], partitionName("events", M), "this month's rows are untouched");
    await assert.rejects(
      dropPartitionsOlderThan(client, "public", streams, 0),
      /retention/,
      "0 months (which would drop this month) is refused",
    );
  });

  test("an id whose partition was dropped is new again; an id still stored in the default partition stays a duplicate", async () => {
    // old-0 was dropped with its partition: its id is forgotten with it.
    const revived = await sendEvents([event("old-0", { timestamp: at(rel(-14), DAY) })]);
    assert.deepEqual([revived.accepted, revived.duplicates], [1, 0]);
    // pt-far-past (2001) is older than every cutoff above but still stored in events_default: a producer's
    // retry must not store it twice.
    const retried = await sendEvents([event("pt-far-past", { timestamp: "2001-09-09T01:46:40Z" })]);
    assert.deepEqual([retried.accepted, retried.duplicates], [0, 1]);
    assert.equal(Number((await client.query(`SELECT count(*) AS n FROM events WHERE event_id = 'pt-far-past'`)).rows[0].n), 1);
  });
});

describe("retention by the daemon", () => {
  test("a daemon started with RETENTION_MONTHS drops the old partitions at start and keeps the rest", async () => {
    const old = rel(-8);
    await createPartitions(client, "public", streams, [old, rel(-2)]);
    await sendEvents([event("ret-old", { timestamp: at(old, DAY) }), event("ret-recent", { timestamp: at(rel(-2), DAY) })]);
    const second = await fx.startDaemon({ env: { RETENTION_MONTHS: "6" } });
    await waitFor(
      "retention to drop the old partition",
      async () => !(await partitionsOf("events")).includes(partitionName("events", old)),
      15_000,
    );
    const parts = await partitionsOf("events");
    for (const keep of [rel(-2), rel(-1), M, rel(1)]) assert.ok(parts.includes(partitionName("events", keep)), `keeps ${monthLabel(keep)}`);
    assert.deepEqual(Object.keys(await whereStored("ret-")), ["ret-recent"]);
    // Logs are written asynchronously (pino): the line may follow the committed drop by a moment.
    await waitFor("the daemon logs what it dropped", () => second.output.some((l) => l.includes("partitions dropped by retention")), 5_000);
    await second.stop();
  });
});

describe("ingestd partitions (CLI)", () => {
  test("list prints every partition with its month and row count", async () => {
    const res = await runCli(["partitions", "list"]);
    assert.equal(res.code, 0, res.stderr);
    for (const table of PARTITIONED) {
      assert.match(res.stdout, new RegExp(`^${table}\\s+${partitionName(table, M)}\\s+${monthLabel(M)}\\s+\\d+ rows$`, "m"));
      assert.match(res.stdout, new RegExp(`^${table}\\s+${table}_default\\s+default\\s+\\d+ rows$`, "m"));
    }
  });

  test("create YYYY-MM creates the month and says so; a second time there is nothing to create", async () => {
    const res = await runCli(["partitions", "create", "2020-05"]);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout.trim(), `created ${PARTITIONED.map((t) => `${t}_p2020_05`).join(", ")}`);
    for (const table of PARTITIONED) assert.ok((await partitionsOf(table)).includes(`${table}_p2020_05`));
    const again = await runCli(["partitions", "create", "2020-05"]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /nothing to create/);
  });

  test("create --month YYYY-MM (the spelling of issue 4)", async () => {
    const res = await runCli(["partitions", "create", "--month", "2020-06"]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /events_p2020_06/);
  });

  test("drop --older-than N drops the old partitions, prints them, and keeps this month", async () => {
    const res = await runCli(["partitions", "drop", "--older-than", "24"]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /^dropped .*events_p2020_05/);
    assert.ok(!res.stdout.includes(partitionName("events", M)));
    for (const table of PARTITIONED) {
      const parts = await partitionsOf(table);
      assert.ok(!parts.includes(`${table}_p2020_05`));
      assert.ok(parts.includes(partitionName(table, M)));
    }
    const nothing = await runCli(["partitions", "drop", "--older-than", "24"]);
    assert.equal(nothing.code, 0, nothing.stderr);
    assert.match(nothing.stdout, /nothing older than 24 months/);
  });

  test("usage errors exit 64 and change nothing", async () => {
    const before = await partitionsOf("events");
    for (const args of [
      ["partitions", "create", "2020-13"],
      ["partitions", "drop", "--older-than", "0"],
      ["partitions", "drop", "--older-than", "x"],
      ["partitions", "frobnicate"],
    ]) {
      const res = await runCli(args);
      assert.equal(res.code, 64, `${args.join(" ")}: ${res.stdout}${res.stderr}`);
      assert.ok(res.stderr.length > 0);
    }
    assert.deepEqual(await partitionsOf("events"), before);
  });
});

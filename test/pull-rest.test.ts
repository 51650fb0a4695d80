/**
 * REST pull sources (docs/sources.md) against a real REST API on loopback, the real daemon and PostgreSQL:
 * page, cursor and link pagination; an incremental watermark that moves only on success, is sent back, and
 * survives a restart (nothing unchanged is fetched twice); upserts replacing changed users; 429 with
 * Retry-After, 500, a slow API and malformed JSON; dead letters `pull:<name>`; a header secret from the
 * environment that never shows in logs or answers; GET /v1/sources, metrics.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { useTestDb } from "./fixture";
import { CLI, get, post, ROOT, waitFor, type Daemon } from "./harness";
import { tempDir } from "./security-helpers";
import { answers, configWithSources, demoUser, startRestApi, USER_FIELDS, type RestApi } from "./source-servers";

const TOKEN = `pull-secret-${process.pid}-${Date.now()}`;
const fx = useTestDb();
const dir = tempDir("ingestd-pull-rest-");
let api: RestApi;
let config: string;
let daemon: Daemon;

const T = (minute: number) => `2026-11-01T10:${String(minute).padStart(2, "0")}:00.000Z`;

fx.setup(async () => {
  // /page serves ids 1..9, /cursor 100.., /link 200.., the failure paths 300..
  api = await startRestApi(
    TOKEN,
    (p) => (id) => (p === "/page" ? id < 100 : p === "/cursor" ? id >= 100 && id < 200 : p === "/link" ? id >= 200 && id < 300 : id >= 300),
  );
  for (let id = 1; id <= 5; id++) api.users.set(id, demoUser(id, T(id)));
  for (let id = 101; id <= 105; id++) api.users.set(id, demoUser(id, T(0)));
  for (let id = 201; id <= 205; id++) api.users.set(id, demoUser(id, T(0)));
  api.users.set(301, demoUser(301, T(0)));
  api.users.set(302, demoUser(302, T(0), { email: "not an address" }));
  api.script.set("/flaky", [answers.status(429, { "retry-after": "1" }), answers.status(500)]);
  api.script.set("/slow", [answers.slow(3000), answers.slow(3000)]);
  api.script.set("/malformed", [answers.malformed(), answers.malformed()]);
  const common = { kind: "rest", stream: "users", records: "", fields: USER_FIELDS, every: "1h", backoffMs: 50, maxBackoffMs: 200 };
  config = configWithSources(dir, {
    "users-page": {
      ...common,
      url: `${api.base}/page`,
      // The configuration's `${NAME}` syntax, not a template literal.
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the daemon expands it from its environment
      headers: { Authorization: "Bearer ${PULL_TOKEN}" },
      pagination: { type: "page", pageParam: "page", sizeParam: "per_page", size: 2 },
      incremental: { field: "updated_at", param: "updated_since" },
    },
    "users-cursor": {
      ...common,
      url: `${api.base}/cursor`,
      records: "users",
      pagination: { type: "cursor", cursorPath: "next", cursorParam: "cursor" },
    },
    "users-link": { ...common, url: `${api.base}/link`, pagination: { type: "link" } },
    flaky: { ...common, url: `${api.base}/flaky`, retries: 3 },
    slow: { ...common, url: `${api.base}/slow`, timeoutMs: 300, retries: 1 },
    malformed: { ...common, url: `${api.base}/malformed`, retries: 1 },
  });
  daemon = await fx.startDaemon({ env: { INGESTD_CONFIG: config, PULL_TOKEN: TOKEN, WORKERS: "1", LOG_LEVEL: "trace" } });
});
fx.teardown(() => api?.close());
after(() => fs.rmSync(dir, { recursive: true, force: true }));

async function sources(): Promise<Record<string, any>> {
  const res = await get(`${daemon.base}/v1/sources`);
  assert.equal(res.status, 200, res.text);
  return Object.fromEntries(res.json.sources.map((s: any) => [s.name, s]));
}

/** Waits until every source has run at least `runs` times (the first runs start with the daemon). */
async function ranAll(runs: number): Promise<Record<string, any>> {
  return waitFor(
    `every source to run ${runs} times`,
    async () => {
      const all = await sources();
      return Object.values(all).every((s) => s.runs >= runs && s.state !== "running") ? all : null;
    },
    30_000,
    100,
  );
}

async function userIds(from: number, to: number): Promise<number[]> {
  const { rows } = await fx.db.query("SELECT id FROM users WHERE id >= $1 AND id <= $2 ORDER BY id", [from, to]);
  return rows.map((r) => r.id);
}

test("each pagination style stores every record; the first run starts with the daemon", async () => {
  const all = await ranAll(1);
  assert.deepEqual(await userIds(1, 99), [1, 2, 3, 4, 5]);
  assert.deepEqual(await userIds(100, 199), [101, 102, 103, 104, 105]);
  assert.deepEqual(await userIds(200, 299), [201, 202, 203, 204, 205]);
  assert.deepEqual(all["users-page"].records, { accepted: 5, duplicates: 0, rejected: 0, fetched: 5, pages: 3 });
  assert.equal(all["users-cursor"].records.pages, 3);
  assert.equal(all["users-link"].records.pages, 3);
  assert.equal(all["users-page"].state, "idle");
  assert.equal(all["users-page"].watermark, T(5));
  assert.ok(Date.parse(all["users-page"].next_run_at) > Date.now() + 50 * 60_000, "next run an hour later");
  // Secret header: sent, from the environment.
  assert.ok(api.log.filter((r) => r.path === "/page").every((r) => r.headers.authorization === `Bearer ${TOKEN}`));
});

test("incremental: only changed users are fetched again, they replace the stored rows, the watermark moves", async () => {
  await ranAll(1);
  api.users.set(3, demoUser(3, T(30), { email: "moved@april.biz" }));
  const before = api.log.length;
  const run = await post(`${daemon.base}/v1/sources/users-page/run`, "");
  assert.equal(run.status, 200, run.text);
  assert.deepEqual(run.json.records, { accepted: 1, duplicates: 0, rejected: 0, fetched: 1, pages: 1 });
  assert.equal(run.json.watermark, T(30));
  const second = api.log.slice(before).filter((r) => r.path === "/page");
  assert.equal(second[0].query.get("updated_since"), T(5));
  assert.equal(
    second.reduce((n, r) => n + r.served, 0),
    1,
  );
  const { rows } = await fx.db.query("SELECT email FROM users WHERE id = 3");
  assert.equal(rows[0].email, "moved@april.biz");
  // Unchanged: nothing served, nothing stored.
  const idle = await post(`${daemon.base}/v1/sources/users-page/run`, "");
  assert.deepEqual(idle.json.records, { accepted: 0, duplicates: 0, rejected: 0, fetched: 0, pages: 1 });
  assert.equal(idle.json.watermark, T(30));
  // Cursor pages again: unchanged users are duplicates (upserts), not new rows.
  const again = await post(`${daemon.base}/v1/sources/users-cursor/run`, "");
  assert.deepEqual([again.json.records.accepted, again.json.records.duplicates], [0, 5]);
});

test("429 with Retry-After and a 500 are retried (Retry-After honoured); the run succeeds", async () => {
  const all = await ranAll(1);
  assert.equal(all.flaky.state, "idle", JSON.stringify(all.flaky));
  assert.equal(all.flaky.records.accepted, 1);
  const hits = api.log.filter((r) => r.path === "/flaky");
  assert.ok(hits.length >= 3);
  assert.ok(hits[1].at - hits[0].at >= 950, `waited ${hits[1].at - hits[0].at} ms after 429 Retry-After: 1`);
  const metrics = await get(`${daemon.base}/metrics`);
  assert.match(metrics.text, /ingestd_source_requests_total\{source="flaky",status="429"\} 1/);
  assert.match(metrics.text, /ingestd_source_requests_total\{source="flaky",status="500"\} 1/);
  assert.match(metrics.text, /ingestd_source_runs_total\{source="flaky",outcome="success"\} 1/);
});

test("a slow API and malformed JSON fail the run after the retries: failing, the error named, nothing stored, watermark kept", async () => {
  const all = await ranAll(1);
  assert.equal(all.slow.state, "failing");
  assert.match(all.slow.error, /no answer within 300 ms/);
  assert.equal(all.slow.consecutive_failures, 1);
  assert.equal(all.slow.watermark, null);
  assert.equal(all.slow.last_success_at, null);
  assert.equal(api.log.filter((r) => r.path === "/slow").length, 2, "one try and one retry");
  assert.equal(all.malformed.state, "failing");
  assert.match(all.malformed.error, /not JSON/);
  const metrics = await get(`${daemon.base}/metrics`);
  assert.match(metrics.text, /ingestd_source_consecutive_failures\{source="slow"\} 1/);
  assert.match(metrics.text, /ingestd_source_runs_total\{source="malformed",outcome="failed"\} 1/);
  // Once the API answers, the next run succeeds and the failures reset.
  const ok = await post(`${daemon.base}/v1/sources/malformed/run`, "");
  assert.equal(ok.json.state, "idle", JSON.stringify(ok.json));
  assert.equal(ok.json.consecutive_failures, 0);
});

test("records the stream refuses become dead letters with source pull:<name>", async () => {
  await ranAll(1);
  // flaky, slow and malformed serve 301 (valid) and 302 (an invalid email).
  const { rows } = await fx.db.query("SELECT source, errors FROM ingest_dead_letters WHERE stream = 'users' ORDER BY id");
  assert.ok(rows.length >= 1);
  assert.ok(rows.every((r) => r.source.startsWith("pull:")));
  assert.ok(rows.some((r) => r.source === "pull:flaky" && r.errors[0].path === "email"));
});

test("the watermark survives a restart and is sent on the next run; the secret never shows", async () => {
  await ranAll(1);
  await daemon.stop();
  daemon = await fx.startDaemon({ env: { INGESTD_CONFIG: config, PULL_TOKEN: TOKEN, WORKERS: "1", LOG_LEVEL: "trace" } });
  const all = await sources();
  assert.equal(all["users-page"].watermark, T(30));
  const before = api.log.length;
  const run = await post(`${daemon.base}/v1/sources/users-page/run`, "");
  assert.equal(run.status, 200);
  assert.equal(
    api.log
      .slice(before)
      .find((r) => r.path === "/page")!
      .query.get("updated_since"),
    T(30),
  );
  const shown = JSON.stringify(await sources()) + daemon.output.join("\n");
  assert.ok(!shown.includes(TOKEN), "the header secret is never logged or served");
  const unknown = await post(`${daemon.base}/v1/sources/nope/run`, "");
  assert.equal(unknown.status, 404);
});

test("ingestd sources list | run NAME ask the running daemon", async () => {
  await ranAll(1);
  // Not spawnSync: the REST API the daemon fetches from runs in this process.
  const cli = (...args: string[]) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [CLI, "sources", ...args, "--url", daemon.base], { timeout: 20_000 }, (err, stdout, stderr) =>
        resolve({ status: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
      );
    });
  const list = await cli("list");
  assert.equal(list.status, 0, list.stderr);
  assert.match(list.stdout, /^users-page {2}rest {2}users {2}1h {2}idle {2}/m);
  assert.match(list.stdout, /^slow .*failing/m);
  assert.match(list.stdout, /error: .*no answer within 300 ms/);
  const run = await cli("run", "users-link");
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /^users-link .* 5 fetched, 0 accepted, 5 dup, 0 rejected/m);
  api.script.set("/slow", [answers.slow(3000), answers.slow(3000)]);
  const failing = await cli("run", "slow");
  assert.equal(failing.status, 1);
  assert.equal((await cli("run", "nope")).status, 1);
});

test("seed 002's example sources are a valid configuration; bad sources are configuration errors (78) naming the field", async () => {
  const checkConfig = (sources: Record<string, unknown>) =>
    new Promise<{ code: number; out: string }>((resolve) =>
      execFile(
        process.execPath,
        [CLI, "check-config"],
        { env: { ...process.env, INGESTD_CONFIG: configWithSources(dir, sources) }, timeout: 20_000 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, out: stdout + stderr }),
      ),
    );
  const example = JSON.parse(fs.readFileSync(path.join(ROOT, "config/sources.example.json"), "utf8"));
  const ok = await checkConfig(example.sources);
  assert.equal(ok.code, 0, ok.out);
  const base = { kind: "rest", stream: "users", url: "http://127.0.0.1:9/x", records: "", every: "1m" };
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ ...base, stream: "orders" }, /sources\.bad\.stream: stream orders takes text only/],
    [{ ...base, stream: "nope" }, /sources\.bad\.stream: no such stream "nope"/],
    [{ ...base, kind: "graphql" }, /sources\.bad\.query: a graphql source needs its query document/],
    [{ ...base, every: "soon" }, /sources\.bad\.every/],
    [{ ...base, url: "ftp://x/" }, /sources\.bad\.url: expected http: or https:/],
    [{ ...base, pagination: { type: "page" } }, /sources\.bad\.pagination/],
  ];
  for (const [source, message] of cases) {
    const bad = await checkConfig({ bad: source });
    assert.equal(bad.code, 78, bad.out);
    assert.match(bad.out, message);
  }
});

/**
 * GraphQL pull sources and several daemons (docs/sources.md): a real GraphQL API (the `graphql` reference
 * implementation served by `graphql-http` on node:http, loopback) of countries with cursor pagination, a
 * field mapping (`continent.name`), upserts on a changed currency, GraphQL errors in the answer failing the
 * run; then two daemons on one database sharing a source that runs every second: each run happens once; a
 * slot claimed as a daemon stops is given back.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { after, test } from "node:test";
import { buildSchema } from "graphql";
import { createHandler } from "graphql-http/lib/use/http";
import pg from "pg";
import { streams } from "../config/streams";
import { ensureSchema } from "../src/storage/schema";
import { SourceState } from "../src/storage/source-state";
import { useTestDb } from "./fixture";
import { get, post, waitFor } from "./harness";
import { tempDir } from "./security-helpers";
import { configWithSources, demoUser, startRestApi } from "./source-servers";

interface Country {
  code: string;
  name: string;
  capital: string | null;
  currency: string | null;
  continent: { code: string; name: string };
}

const countries: Country[] = [
  { code: "AD", name: "Andorra", capital: "Andorra la Vella", currency: "EUR", continent: { code: "EU", name: "Europe" } },
  { code: "AQ", name: "Antarctica", capital: null, currency: null, continent: { code: "AN", name: "Antarctica" } },
  { code: "BR", name: "Brazil", capital: "Brasília", currency: "BRL", continent: { code: "SA", name: "South America" } },
  { code: "FR", name: "France", capital: "Paris", currency: "EUR", continent: { code: "EU", name: "Europe" } },
  { code: "JP", name: "Japan", capital: "Tokyo", currency: "JPY", continent: { code: "AS", name: "Asia" } },
];

const schema = buildSchema(`
  type Continent { code: String!, name: String! }
  type Country { code: String!, name: String!, capital: String, currency: String, continent: Continent! }
  type CountryPage { items: [Country!]!, nextCursor: String }
  type Query {
    countries(first: Int!, after: String): CountryPage!
    secret: String
  }
`);
const queries: Array<Record<string, unknown>> = [];
const rootValue = {
  countries: ({ first, after }: { first: number; after?: string }, _ctx: unknown) => {
    queries.push({ first, after });
    const from = after ? countries.findIndex((c) => c.code === after) + 1 : 0;
    const items = countries.slice(from, from + first);
    return { items, nextCursor: from + first < countries.length ? items[items.length - 1].code : null };
  },
  secret: () => {
    throw new Error("not allowed to see the secret");
  },
};

const fx = useTestDb();
const dir = tempDir("ingestd-pull-gql-");
let gql: http.Server;
let gqlUrl: string;
fx.setup(async () => {
  gql = http.createServer(createHandler({ schema, rootValue }));
  await new Promise<void>((resolve) => gql.listen(0, "127.0.0.1", resolve));
  gqlUrl = `http://127.0.0.1:${(gql.address() as { port: number }).port}/graphql`;
});
fx.teardown(
  () =>
    new Promise<void>((resolve) => {
      gql.closeAllConnections();
      gql.close(() => resolve());
    }),
);
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const countriesSource = () => ({
  kind: "graphql",
  stream: "countries",
  url: gqlUrl,
  query:
    "query ($first: Int!, $after: String) { countries(first: $first, after: $after) { items { code name capital currency continent { name } } nextCursor } }",
  variables: { first: 2 },
  records: "data.countries.items",
  fields: { code: "code", name: "name", capital: "capital", currency: "currency", continent: "continent.name" },
  pagination: { type: "cursor", cursorPath: "data.countries.nextCursor", cursorParam: "after" },
  every: "1h",
});

test("countries from GraphQL, cursor pages, mapped fields; a changed currency replaces the row; GraphQL errors fail the run", async () => {
  const config = configWithSources(dir, {
    countries: countriesSource(),
    "countries-broken": { ...countriesSource(), query: "{ secret }", records: "data.secret", pagination: { type: "none" } },
  });
  const daemon = await fx.startDaemon({ env: { INGESTD_CONFIG: config, WORKERS: "1" } });
  const all = await waitFor("both sources to run", async () => {
    const res = await get(`${daemon.base}/v1/sources`);
    const byName = Object.fromEntries(res.json.sources.map((s: any) => [s.name, s]));
    return byName.countries?.runs >= 1 && byName["countries-broken"]?.runs >= 1 ? byName : null;
  });
  assert.deepEqual(all.countries.records, { accepted: 5, duplicates: 0, rejected: 0, fetched: 5, pages: 3 });
  assert.deepEqual(
    queries.map((q) => q.after ?? null),
    [null, "AQ", "FR"],
  );
  const { rows } = await fx.db.query("SELECT code, capital, currency, continent FROM countries ORDER BY code");
  assert.deepEqual(rows[0], { code: "AD", capital: "Andorra la Vella", currency: "EUR", continent: "Europe" });
  assert.deepEqual(rows[1], { code: "AQ", capital: null, currency: null, continent: "Antarctica" });
  assert.equal(all["countries-broken"].state, "failing");
  assert.match(all["countries-broken"].error, /GraphQL errors: not allowed to see the secret/);

  countries[2].currency = "BRX";
  const run = await post(`${daemon.base}/v1/sources/countries/run`, "");
  assert.equal(run.status, 200, run.text);
  assert.deepEqual([run.json.records.accepted, run.json.records.duplicates], [1, 4]);
  const brazil = await get(`${daemon.base}/countries?code=BR`);
  assert.equal(brazil.json.records[0].currency, "BRX");
  await daemon.stop();
});

test("two daemons on one database: each run of a source happens once", async () => {
  const api = await startRestApi("t");
  fx.teardown(() => api.close());
  api.users.set(400, demoUser(400, "2026-11-01T00:00:00Z"));
  const { updated_at: _u, ...fields } = Object.fromEntries(Object.keys(demoUser(1, "")).map((k) => [k, k]));
  // No retries: a request is a run. A retried request is the daemon's right (a keep-alive connection the API
  // closed as it was reused, on a loaded machine), but would count as a second request of the same run.
  const config = configWithSources(dir, {
    shared: { kind: "rest", stream: "users", url: `${api.base}/cursor`, records: "users", fields, every: "1s", retries: 0 },
  });
  const started = Date.now();
  const [a, b] = await Promise.all([
    fx.startDaemon({ env: { INGESTD_CONFIG: config, WORKERS: "1" } }),
    fx.startDaemon({ env: { INGESTD_CONFIG: config, WORKERS: "1" } }),
  ]);
  await new Promise((r) => setTimeout(r, 6000));
  await Promise.all([a.stop(), b.stop()]);
  const elapsed = Date.now() - started;
  const hits = api.log.filter((r) => r.path === "/cursor");
  const runLines = (d: typeof a) => d.output.filter((l) => l.includes("pull source run"));
  // On failure: when each request came (ms from the start) and what each daemon said of its runs.
  const trace = ` (requests at ${hits.map((h) => h.at - started).join(", ")} ms; runs logged: ${JSON.stringify([runLines(a), runLines(b)])})`;
  const logged = runLines(a).length + runLines(b).length;
  const succeeded = [...runLines(a), ...runLines(b)].filter((l) => l.includes("run done")).length;
  const { rows } = await fx.db.query("SELECT runs FROM ingest_sources WHERE name = 'shared'");
  // A run the stop cut short failed and counts; one claimed as the stop came was given back uncounted.
  assert.equal(Number(rows[0].runs), logged, `every run counted once, and logged${trace}`);
  assert.ok(succeeded >= 3, `${succeeded} runs succeeded in ${elapsed} ms${trace}`);
  // Each successful run made its one request; a failed one made it or was stopped before it.
  assert.ok(hits.length >= succeeded && hits.length <= logged, `${hits.length} requests for ${logged} runs${trace}`);
  assert.ok(logged <= Math.floor(elapsed / 1000) + 1, `${logged} runs in ${elapsed} ms: some slot ran twice${trace}`);
  // Slots are 1 s apart; a slot run twice would show as two requests a few ms apart (500: room for a loaded machine).
  for (let i = 1; i < hits.length; i++)
    assert.ok(hits[i].at - hits[i - 1].at >= 500, `runs ${i - 1} and ${i} ${hits[i].at - hits[i - 1].at} ms apart${trace}`);
});

test("a slot claimed as a daemon stops is given back: due as it was, not counted, free for another daemon", async () => {
  const pool = new pg.Pool({ connectionString: fx.db.url, max: 3 });
  // pool.end() resolves before its connections have closed: the fixture's database stop right after may
  // still reach one, which the pool reports as an error event (as the daemon's own pools, it ignores them).
  pool.on("error", () => undefined);
  fx.teardown(() => pool.end());
  const client = await pool.connect();
  await ensureSchema(client, "public", streams);
  client.release();
  const state = new SourceState(pool, "public");
  await state.ensure(["given-back"]);
  const due = new Date("2026-01-01T00:00:00Z");
  await pool.query("UPDATE ingest_sources SET next_run_at = $1 WHERE name = 'given-back'", [due]);
  const run = await state.claim("given-back", 60_000, false, "test:1");
  assert.ok(typeof run === "object", String(run));
  const claimed = await state.row("given-back");
  assert.ok(claimed!.next_run_at > due && claimed!.running_on === "test:1", "the claim moved the slot and names its daemon");
  assert.equal(await state.claim("given-back", 60_000, true, "test:2"), "locked", "held while claimed");
  await run.giveBack();
  const back = await state.row("given-back");
  assert.deepEqual(
    [back!.next_run_at.toISOString(), back!.runs, back!.running_on, back!.running_since],
    [due.toISOString(), "0", null, null],
  );
  const again = await state.claim("given-back", 60_000, false, "test:2");
  assert.ok(typeof again === "object", `due again and free to claim: ${String(again)}`);
  await again.finish({
    ok: true,
    error: null,
    watermark: null,
    records: { accepted: 0, duplicates: 0, rejected: 0, fetched: 0, pages: 1 },
  });
  assert.equal((await state.row("given-back"))!.runs, "1");
});

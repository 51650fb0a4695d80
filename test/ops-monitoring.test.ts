/**
 * The shipped Grafana dashboard and Prometheus alert rules (monitoring/, docs/operations.md#dashboard-and-alerts):
 * the rules pass `promtool check rules` and their unit tests (`promtool test rules`: each alert fires on the
 * series that should fire it, and only on those), the dashboard's queries are valid PromQL by the same
 * promtool, and every metric the dashboard and the rules query is in a real daemon's /metrics after some
 * traffic, with the labels they match on (and the values they match exactly).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { before, describe, test } from "node:test";
import { useFixture } from "./fixture";
import { event, openWs, post, ROOT, type Daemon } from "./harness";
import { getMetrics, requireTool, sendEvents } from "./ops-tools";

const MONITORING = path.join(ROOT, "monitoring");
const RULES = path.join(MONITORING, "prometheus-alerts.yml");
const RULE_TESTS = path.join(MONITORING, "prometheus-alerts.test.yml");
const DASHBOARD = path.join(MONITORING, "grafana-dashboard.json");
const INSTALL = "apt-get install prometheus";
/** Nothing up front: the last describe() starts its database and daemon. */
const fx = useFixture();

/** The `expr:` values of a rules file: one-line values and `|` block scalars (the only forms it uses). */
function ruleExpressions(file: string): { alert: string; expr: string }[] {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  const out: { alert: string; expr: string }[] = [];
  let alert = "";
  for (let i = 0; i < lines.length; i++) {
    const a = /^\s*- alert:\s*(\S+)/.exec(lines[i]);
    if (a) alert = a[1];
    const m = /^(\s*)expr:\s*(.*)$/.exec(lines[i]);
    if (!m) continue;
    if (m[2].trim() !== "|") {
      out.push({ alert, expr: m[2].trim() });
      continue;
    }
    const body: string[] = [];
    while (i + 1 < lines.length && (lines[i + 1].trim() === "" || lines[i + 1].search(/\S/) > m[1].length)) body.push(lines[++i].trim());
    out.push({ alert, expr: body.join(" ").trim() });
  }
  return out;
}

function dashboardExpressions(): { panel: string; expr: string }[] {
  const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, "utf8"));
  const out: { panel: string; expr: string }[] = [];
  for (const p of dashboard.panels) for (const t of p.targets ?? []) out.push({ panel: p.title, expr: t.expr });
  return out;
}

/** Grafana's variables as Prometheus would receive them. */
const asPromql = (expr: string) => expr.replaceAll("$__rate_interval", "1m").replaceAll("$instance", ".*");

const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"]);

/** Metric names a PromQL expression reads: identifiers that are not functions, keywords or grouping labels. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names = new Set<string>();
  for (const m of bare.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2] || KEYWORDS.has(m[1]) || /^(?:e|inf|nan)$/i.test(m[1])) continue;
    names.add(m[1]);
  }
  return [...names];
}

/** Every `name{label op "value", ...}` selector of an expression, with its matchers. */
function selectors(expr: string): { name: string; matchers: { label: string; op: string; value: string }[] }[] {
  const out: { name: string; matchers: { label: string; op: string; value: string }[] }[] = [];
  for (const m of expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}/g)) {
    const matchers = [...m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)].map((x) => ({
      label: x[1],
      op: x[2],
      value: x[3],
    }));
    out.push({ name: m[1], matchers });
  }
  return out;
}

describe("the alert rules", () => {
  test("pass `promtool check rules`", (t) => {
    if (!requireTool(t, "promtool", INSTALL)) return;
    const r = spawnSync("promtool", ["check", "rules", RULES], { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS: 8 rules found/);
  });

  test("fire on the series that should fire them and on no others (`promtool test rules`)", (t) => {
    if (!requireTool(t, "promtool", INSTALL)) return;
    const r = spawnSync("promtool", ["test", "rules", path.basename(RULE_TESTS)], { cwd: MONITORING, encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS/);
    const alerts = ruleExpressions(RULES).map((e) => e.alert);
    assert.deepEqual(alerts, [
      "IngestdDatabaseDown",
      "IngestdRingFilling",
      "IngestdAckLatencyHigh",
      "IngestdRequestsFailing",
      "IngestdRecordsRejected",
      "IngestdServerErrors",
      "IngestdSourceFailing",
      "IngestdDedupFiltersOverBudget",
    ]);
    const tests = fs.readFileSync(RULE_TESTS, "utf8");
    for (const a of alerts)
      assert.match(tests, new RegExp(`alertname: ${a}\\n\\s+exp_alerts:\\n\\s+- exp_labels`), `${a} has a test where it fires`);
  });
});

describe("the Grafana dashboard", () => {
  test("is a dashboard of unique panels, each query on the data-source variable, valid PromQL by promtool", (t) => {
    const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, "utf8"));
    assert.equal(dashboard.uid, "ingestd-overview");
    assert.ok(dashboard.templating.list.some((v: any) => v.name === "datasource" && v.type === "datasource" && v.query === "prometheus"));
    const ids = dashboard.panels.map((p: any) => p.id);
    assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
    for (const p of dashboard.panels) {
      assert.ok(p.gridPos && p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `${p.title}: fits the 24-column grid`);
      if (p.type === "row") continue;
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's own variable syntax, not a JS template
      assert.equal(p.datasource.uid, "${datasource}", p.title);
      assert.ok(p.targets.length > 0, `${p.title} has queries`);
      for (const target of p.targets)
        assert.ok(target.expr.includes('instance=~"$instance"'), `${p.title}: ${target.expr} follows the instance variable`);
    }
    if (!requireTool(t, "promtool", INSTALL)) return;
    // promtool parses PromQL in rule files: the dashboard's queries as recording rules.
    const exprs = dashboardExpressions();
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-dashboard-")), "dashboard-queries.yml");
    const rules = exprs.map((e, i) => `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(asPromql(e.expr))}`).join("\n");
    fs.writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules}\n`);
    try {
      const r = spawnSync("promtool", ["check", "rules", file], { encoding: "utf8", timeout: 30_000 });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, new RegExp(`SUCCESS: ${exprs.length} rules found`));
    } finally {
      fs.rmSync(path.dirname(file), { recursive: true, force: true });
    }
  });
});

describe("every metric they query is in /metrics after some traffic", () => {
  let daemon: Daemon;
  before(async () => {
    // One pull source, configured and never run (enabled: false): its series exist all the same.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-mon-"));
    const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
    config.sources = {
      users: { kind: "rest", stream: "users", url: "http://127.0.0.1:9/users", records: "", every: "1h", enabled: false },
    };
    fs.writeFileSync(path.join(dir, "ingestd.json"), JSON.stringify(config));
    fx.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    daemon = await fx.startDaemon({ databaseUrl: (await fx.startDb()).url, env: { INGESTD_CONFIG: path.join(dir, "ingestd.json") } });
  });

  test("names, label names, and the label values matched exactly", async () => {
    // Traffic touching every series the queries read: HTTP and WebSocket ingest, a rejected record, an
    // unreadable body, TPC-H lines; a WebSocket left open while /metrics is read.
    assert.equal(await sendEvents(daemon.base, "mon", 5, 10, 2), 50);
    const bad = await post(`${daemon.base}/v1/streams/events/events`, JSON.stringify([event("mon-ok"), { event_id: "mon-bad" }]));
    assert.equal(bad.status, 207, bad.text);
    const unreadable = await post(`${daemon.base}/v1/streams/events/events`, "{not json");
    assert.equal(unreadable.status, 400, unreadable.text);
    const lines = await post(
      `${daemon.base}/ingest/batch`,
      "O|1|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|nstructions sleep furiously",
      "text/plain",
    );
    assert.equal(lines.status, 200, lines.text);
    const ws = await openWs(`${daemon.wsBase}/v1/ws?stream=events`);
    try {
      ws.send(JSON.stringify([event("mon-ws-1"), event("mon-ws-2")]));
      const [ack] = await ws.waitForAcks(1);
      assert.equal(ack.accepted, 2, JSON.stringify(ack));
      // The worker utilisation gauges are sampled once a second.
      await new Promise((r) => setTimeout(r, 1200));
      const { samples } = await getMetrics(daemon.base);

      const queries = [
        ...ruleExpressions(RULES).map((e) => ({ where: `alert ${e.alert}`, expr: e.expr })),
        ...dashboardExpressions().map((e) => ({ where: `panel "${e.panel}"`, expr: e.expr })),
      ];
      assert.ok(queries.length >= 30, `${queries.length} queries`);
      const read = new Set<string>();
      for (const { where, expr } of queries) {
        const names = metricNames(expr);
        assert.ok(names.length > 0, `${where}: ${expr} reads a metric`);
        for (const name of names) {
          assert.ok(
            samples.some((s) => s.name === name),
            `${where}: ${name} is in /metrics (${expr})`,
          );
          read.add(name);
        }
        for (const { name, matchers } of selectors(expr)) {
          const series = samples.filter((s) => s.name === name);
          for (const m of matchers) {
            if (m.label === "instance") continue; // added by Prometheus when it scrapes
            assert.ok(
              series.some((s) => m.label in s.labels),
              `${where}: ${name} has a label ${m.label}`,
            );
            // Regex matchers pick failures (outcome=~"db_unavailable|failed", status=~"5..") whose series appear only
            // once such a failure happened; the rule tests (promtool test rules) cover those.
            if (m.op === "=")
              assert.ok(
                series.some((s) => s.labels[m.label] === m.value),
                `${where}: ${name}{${m.label}="${m.value}"} is a series`,
              );
          }
        }
      }
      // What the dashboard is for: throughput, ack latency, ring fill, tasks, worker backlog, database, errors, WebSockets.
      for (const name of [
        "ingestd_events_total",
        "ingestd_ack_latency_seconds_bucket",
        "ingestd_ring_used_bytes",
        "ingestd_ring_capacity_bytes",
        "ingestd_tasks_in_flight",
        "ingestd_tasks_waiting",
        "ingestd_worker_backlog_bytes",
        "ingestd_database_up",
        "ingestd_ingest_requests_total",
        "ingestd_ws_connections",
        "ingestd_http_requests_total",
        "ingestd_copy_duration_seconds_bucket",
      ]) {
        assert.ok(read.has(name), `${name} is queried`);
      }
    } finally {
      ws.socket.close();
    }
  });
});

/**
 * What operators read while traffic flows: /v1/latency, /metrics (and promtool's verdict on it), /stats,
 * and the JSON log lines. Real embedded PostgreSQL, the real daemon as a child process.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import WebSocket from "ws";
import { useDaemon } from "./fixture";
import { post, event, waitFor } from "./harness";
import { getJson, getMetrics, metric, requireTool, sendEvents, sleep } from "./ops-tools";

const fx = useDaemon({ env: { WORKERS: "2" } });
const EVENTS_ROUTE = "/v1/streams/:stream/events";

test("/v1/latency: every stage gets percentiles for the stream, over the last interval and since start", async () => {
  const before = await getJson(`${fx.daemon.base}/v1/latency`);
  const startCount = before.since_start.ack?.events?.count ?? 0;
  await sendEvents(fx.daemon.base, "lat", 20, 10);
  // The last interval rotates every latencyIntervalMs (1 s by default): wait for the one holding our traffic.
  await sleep(1300);
  const report = await getJson(`${fx.daemon.base}/v1/latency`);
  assert.equal(report.interval_ms, 1000);
  for (const stage of ["receive", "validate", "commit", "ack"]) {
    const total = report.since_start[stage]?.events;
    assert.ok(total, `since_start has ${stage}.events: ${JSON.stringify(report.since_start)}`);
    assert.ok(total.count >= 20, `${stage}: ${total.count} >= 20`);
    assert.ok(
      total.p50_ms <= total.p95_ms && total.p95_ms <= total.p99_ms && total.p99_ms <= total.max_ms,
      `${stage} ordered: ${JSON.stringify(total)}`,
    );
    assert.ok(total.max_ms > 0, `${stage} max > 0`);
  }
  assert.equal(report.since_start.ack.events.count, startCount + 20);

  // Traffic within one interval shows up in last_interval; an idle interval after it shows none.
  await sendEvents(fx.daemon.base, "lat2", 10, 10);
  // Poll rather than sleep one interval: on a loaded machine the rotation timer runs late.
  const moved = await waitFor(
    "an interval holding the traffic",
    async () => {
      const r = await getJson(`${fx.daemon.base}/v1/latency`);
      // A later interval than the one read above: that one may already hold acks (of the first traffic).
      return Date.parse(r.interval_end) > Date.parse(report.interval_end) && r.last_interval.ack?.events?.count > 0 ? r : null;
    },
    5_000,
    100,
  );
  assert.ok(moved.last_interval.ack.events.count > 0, JSON.stringify(moved.last_interval.ack));
  assert.ok(Date.parse(moved.interval_end) > Date.parse(report.interval_end), "interval advanced");
  await sleep(2100);
  const idle = await getJson(`${fx.daemon.base}/v1/latency`);
  assert.equal(idle.last_interval.ack.events.count, 0, "idle interval has no acks");
});

test("/metrics: counters and histograms move with traffic; gauges describe the daemon", async () => {
  const m0 = (await getMetrics(fx.daemon.base)).samples;
  await sendEvents(fx.daemon.base, "met", 15, 10);
  const m1 = (await getMetrics(fx.daemon.base)).samples;
  const delta = (name: string, labels: Record<string, string> = {}) => metric(m1, name, labels) - metric(m0, name, labels);

  assert.equal(delta("ingestd_events_total", { stream: "events", outcome: "accepted" }), 150);
  assert.equal(delta("ingestd_ingest_requests_total", { stream: "events", transport: "http", outcome: "done" }), 15);
  assert.equal(delta("ingestd_http_requests_total", { route: EVENTS_ROUTE, status: "200" }), 15);
  assert.equal(delta("ingestd_ack_latency_seconds_count", { stream: "events", transport: "http" }), 15);
  assert.ok(delta("ingestd_ack_latency_seconds_sum", { stream: "events", transport: "http" }) > 0);
  assert.equal(delta("ingestd_ack_latency_seconds_bucket", { stream: "events", transport: "http", le: "+Inf" }), 15);
  assert.equal(delta("ingestd_copy_duration_seconds_count", { stream: "events" }), 15);
  assert.equal(metric(m1, "ingestd_database_up"), 1);
  assert.equal(metric(m1, "ingestd_ring_capacity_bytes"), 64 * 1024 * 1024);
  assert.equal(metric(m1, "ingestd_ring_used_bytes"), 0, "nothing held once every request is answered");
  assert.equal(metric(m1, "ingestd_tasks_in_flight"), 0);
  assert.equal(metric(m1, "ingestd_tasks_waiting"), 0);
  assert.equal(metric(m1, "ingestd_worker_backlog_bytes"), 0, "every body's bytes are released once answered");
  assert.equal(metric(m1, "ingestd_worker_threads"), 2);
  assert.ok(metric(m1, "process_resident_memory_bytes") > 0, "default process metrics");
  assert.ok(
    m1.some((s) => s.name === "nodejs_eventloop_lag_seconds"),
    "default Node.js metrics",
  );

  // Worker busy time is sampled once a second from the workers' event loops.
  await sendEvents(fx.daemon.base, "busy", 20, 50);
  await sleep(1200);
  const m2 = (await getMetrics(fx.daemon.base)).samples;
  assert.ok(metric(m2, "ingestd_worker_busy_seconds_total") > metric(m0, "ingestd_worker_busy_seconds_total"), "workers were busy");
  const ratio = metric(m2, "ingestd_worker_pool_utilization_ratio");
  assert.ok(ratio >= 0 && ratio <= 1, `utilization ratio in 0..1: ${ratio}`);

  // Rejected records and request statuses are counted by outcome and status.
  const bad = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("ok-1"), { event_id: "bad" }]));
  assert.equal(bad.status, 207, bad.text);
  const unknown = await post(`${fx.daemon.base}/v1/streams/nope/events`, "{}");
  assert.equal(unknown.status, 404);
  const m3 = (await getMetrics(fx.daemon.base)).samples;
  assert.equal(
    metric(m3, "ingestd_events_total", { stream: "events", outcome: "rejected" }) -
      metric(m2, "ingestd_events_total", { stream: "events", outcome: "rejected" }),
    1,
  );
  assert.equal(metric(m3, "ingestd_http_requests_total", { route: EVENTS_ROUTE, status: "207" }), 1);
  assert.equal(metric(m3, "ingestd_http_requests_total", { route: EVENTS_ROUTE, status: "404" }), 1);
});

test("/metrics: WebSocket connections and frames", async () => {
  const ws = new WebSocket(`${fx.daemon.wsBase}/v1/ws?stream=events`);
  const messages: any[] = [];
  const next = () =>
    new Promise<any>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no message within 10 s")), 10_000);
      const check = () => (messages.length > 0 ? (clearTimeout(t), resolve(messages.shift())) : setTimeout(check, 10));
      check();
    });
  ws.on("message", (data) => messages.push(JSON.parse(String(data))));
  await new Promise((resolve, reject) => (ws.once("open", resolve), ws.once("error", reject)));
  assert.equal((await next()).type, "hello");
  const m0 = (await getMetrics(fx.daemon.base)).samples;
  assert.equal(metric(m0, "ingestd_ws_connections"), 1);
  ws.send(JSON.stringify([event("ws-1"), event("ws-2")]));
  const ack = await next();
  assert.equal(ack.type, "ack");
  assert.equal(ack.accepted, 2);
  const m1 = (await getMetrics(fx.daemon.base)).samples;
  assert.equal(
    metric(m1, "ingestd_ws_frames_total", { stream: "events" }) - metric(m0, "ingestd_ws_frames_total", { stream: "events" }),
    1,
  );
  assert.equal(metric(m1, "ingestd_ingest_requests_total", { stream: "events", transport: "ws", outcome: "done" }), 1);
  assert.equal(metric(m1, "ingestd_ack_latency_seconds_count", { stream: "events", transport: "ws" }), 1);
  ws.close(1000);
  await new Promise((resolve) => ws.once("close", resolve));
  for (let i = 0; i < 50 && metric((await getMetrics(fx.daemon.base)).samples, "ingestd_ws_connections") !== 0; i++) await sleep(20);
  assert.equal(metric((await getMetrics(fx.daemon.base)).samples, "ingestd_ws_connections"), 0);
});

test("/stats agrees with the metrics it is counted beside", async () => {
  await sendEvents(fx.daemon.base, "stats", 10, 10);
  const unparseable = await post(`${fx.daemon.base}/v1/streams/events/events`, "{not json");
  assert.equal(unparseable.status, 400);
  // requests_per_second averages complete seconds: let the current one complete.
  await sleep(1100);
  const stats = await getJson(`${fx.daemon.base}/stats`);
  const samples = (await getMetrics(fx.daemon.base)).samples;
  const accepted = metric(samples, "ingestd_events_total", { outcome: "accepted" });
  const duplicates = metric(samples, "ingestd_events_total", { outcome: "duplicate" });
  const rejected = metric(samples, "ingestd_events_total", { outcome: "rejected" });
  const failedRequests =
    metric(samples, "ingestd_ingest_requests_total") - metric(samples, "ingestd_ingest_requests_total", { outcome: "done" });
  assert.equal(stats.total_messages_processed, accepted + duplicates);
  assert.equal(
    stats.messages_by_entity.events,
    metric(samples, "ingestd_events_total", { stream: "events", outcome: "accepted" }) +
      metric(samples, "ingestd_events_total", { stream: "events", outcome: "duplicate" }),
  );
  assert.equal(stats.errors, rejected + failedRequests);
  assert.equal(stats.errors_by_kind.unparseable, 1);
  assert.ok(stats.errors_by_kind.rejected >= 1);
  assert.ok(stats.requests_per_second > 0, JSON.stringify(stats));
  assert.ok(Number.isInteger(stats.uptime_seconds) && stats.uptime_seconds >= 1);
  assert.deepEqual(await getJson(`${fx.daemon.base}/v1/stats`).then((s) => Object.keys(s)), Object.keys(stats));
});

test("promtool check metrics passes on the live /metrics output", async (t) => {
  const promtool = requireTool(t, "promtool", "apt-get install prometheus");
  if (!promtool) return;
  await sendEvents(fx.daemon.base, "prom", 5, 10);
  const { text } = await getMetrics(fx.daemon.base);
  assert.match(text, /ingestd_events_total\{stream="events",outcome="accepted"\}/);
  const result = spawnSync(promtool, ["check", "metrics"], { input: text, encoding: "utf8", timeout: 30_000 });
  assert.equal(result.status, 0, `promtool check metrics:\n${result.stdout}${result.stderr}`);
  assert.equal((result.stdout + result.stderr).trim(), "", "no lint findings");
});

test("logs: JSON lines with level, time and message; the database password never appears", () => {
  const password = decodeURIComponent(new URL(fx.db.url).password);
  assert.ok(password.length >= 8, "the test database has a password to leak");
  assert.ok(fx.daemon.output.length > 0);
  for (const line of fx.daemon.output) {
    if (line.trim() === "") continue;
    const entry = JSON.parse(line);
    assert.equal(typeof entry.level, "string", line);
    assert.ok(!Number.isNaN(Date.parse(entry.time)), line);
    assert.equal(typeof entry.msg, "string", line);
    assert.ok(!line.includes(password), `password leaked: ${line}`);
  }
});

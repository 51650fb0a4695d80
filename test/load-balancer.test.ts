/**
 * Several daemons behind a real load balancer (docs/operations.md#several-daemons-behind-a-load-balancer):
 * Debian's HAProxy runs the shipped systemd/haproxy/ingestd.cfg (only its addresses and the process lines
 * of `global` replaced) in front of three daemons on one PostgreSQL, with the drain delay of the shipped
 * systemd/ingestd-cluster.env.example (and `maxconn` lowered to what a test's descriptor limit allows). Producer clients (producer sessions on `logs`, a stream without
 * event-id deduplication) and HTTP producers (`events`) go through the balancer; then:
 *  - a request answered 202 by one daemon is `pending`, then `committed`, on the others;
 *  - one daemon killed with SIGKILL under load and restarted: every acknowledged record stored once;
 *  - one daemon sent SIGTERM under load: HAProxy's health check sees 503 and takes it out while it still
 *    serves, producers move on, and no request is refused.
 * Traffic goes to 127.0.0.1 only; the load is a few thousand records per producer.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, type TestContext, test } from "node:test";
import pg from "pg";
import { Producer } from "../src/client";
import { useTestDb } from "./fixture";
import { type Daemon, event, get, post, ROOT, waitFor } from "./harness";
import { requireTool } from "./ops-tools";

// The daemons left at the end are killed: their drain delay would only add seconds to the teardown.
const fx = useTestDb({ stopSignal: "SIGKILL" });
const HAPROXY_CFG = path.join(ROOT, "systemd/haproxy/ingestd.cfg");
const CLUSTER_ENV = path.join(ROOT, "systemd/ingestd-cluster.env.example");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-lb-"));
const clients: pg.Client[] = [];
let haproxy: ChildProcess | null = null;

fx.teardown(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  if (haproxy && haproxy.exitCode === null) {
    const exited = new Promise((r) => haproxy!.once("exit", r));
    haproxy.kill("SIGTERM");
    await exited;
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The example's DRAIN_DELAY_MS: what the systemd template gives each daemon. */
function drainDelayMs(): number {
  const m = /^DRAIN_DELAY_MS=(\d+)$/m.exec(fs.readFileSync(CLUSTER_ENV, "utf8"));
  assert.ok(m, "the cluster example sets DRAIN_DELAY_MS");
  return Number(m[1]);
}

function daemonEnv(port: number): Record<string, string> {
  // One worker each: three daemons share the two cores.
  return { WORKERS: "1", DRAIN_DELAY_MS: String(drainDelayMs()), PORT: String(port) };
}

/**
 * A free port below the kernel's ephemeral range. A daemon restarted on its port after SIGKILL must find it
 * free: a port from the ephemeral range (PORT=0) can meanwhile be taken as the source port of some outgoing
 * connection (the daemons' own connections to PostgreSQL), as fixed service ports never are.
 */
async function freePort(): Promise<number> {
  const [low] = fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000));
    const server = net.createServer();
    const ok = await new Promise<boolean>((r) => {
      server.once("error", () => r(false));
      server.listen(port, "127.0.0.1", () => r(true));
    });
    if (ok) {
      await new Promise((r) => server.close(r));
      return port;
    }
  }
}

/** The shipped configuration on this machine's ports, run in the foreground as this user. */
function localConfig(listenPort: number, daemonPorts: number[], socket: string): string {
  const text = fs.readFileSync(HAPROXY_CFG, "utf8");
  const servers = [...text.matchAll(/^\s*server (\S+) 127\.0\.0\.1:\d+$/gm)];
  assert.equal(servers.length, daemonPorts.length, "the shipped configuration names three daemons");
  let i = 0;
  return (
    text
      .replace(/^\s*(chroot|user|group|daemon)\b.*\n/gm, "")
      // 100,000 connections need 200,000 descriptors; a test's hard limit may be lower.
      .replace(/^(\s*)maxconn \d+$/m, "$1maxconn 4000")
      .replace(/^(\s*)log \/dev\/log local0$/m, "$1log stdout format raw local0")
      .replace(/stats socket \S+/, `stats socket ${socket}`)
      .replace(/^(\s*)bind 0\.0\.0\.0:8080$/m, `$1bind 127.0.0.1:${listenPort}`)
      .replace(/^(\s*server \S+) 127\.0\.0\.1:\d+$/gm, (_, head) => `${head} 127.0.0.1:${daemonPorts[i++]}`)
  );
}

/** A command on HAProxy's stats socket. */
function hapCommand(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    let out = "";
    c.on("connect", () => c.write(`${command}\n`));
    c.on("data", (d) => (out += d));
    c.on("end", () => resolve(out));
    c.on("error", reject);
  });
}

interface ServerStat {
  status: string;
  check_status: string;
  check_code: string;
  stot: number;
}

interface Cluster {
  daemons: Daemon[];
  ports: number[];
  url: string;
  wsUrl: string;
  servers(): Promise<Map<string, ServerStat>>;
}

let started: Promise<Cluster> | null = null;

/** Three daemons and HAProxy in front of them, started by the first test that runs. */
function cluster(t: TestContext): Promise<Cluster> | null {
  const bin = requireTool(t, "haproxy", "apt-get install haproxy");
  if (!bin) return null;
  started ??= (async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    const first = await Promise.all(ports.map((port) => fx.startDaemon({ env: daemonEnv(port) })));
    const listen = await freePort();
    const socket = path.join(dir, "haproxy.sock");
    const cfg = path.join(dir, "haproxy.cfg");
    fs.writeFileSync(cfg, localConfig(listen, ports, socket));
    const check = spawnSync(bin, ["-c", "-f", cfg], { encoding: "utf8" });
    assert.equal(check.status, 0, `haproxy -c: ${check.stdout}${check.stderr}`);
    const output: string[] = [];
    haproxy = spawn(bin, ["-db", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] });
    haproxy.stdout!.on("data", (d) => output.push(String(d)));
    haproxy.stderr!.on("data", (d) => output.push(String(d)));
    const servers = async () => {
      const csv = (await hapCommand(socket, "show stat")).trim().split("\n");
      const header = csv[0].replace(/^# /, "").split(",");
      const col = (row: string[], name: string) => row[header.indexOf(name)];
      const map = new Map<string, ServerStat>();
      for (const line of csv.slice(1)) {
        const row = line.split(",");
        if (col(row, "pxname") !== "ingestd" || !col(row, "svname").startsWith("ingestd")) continue;
        map.set(col(row, "svname"), {
          status: col(row, "status"),
          check_status: col(row, "check_status"),
          check_code: col(row, "check_code"),
          stot: Number(col(row, "stot")),
        });
      }
      return map;
    };
    await waitFor(
      "HAProxy to see three healthy daemons",
      async () => {
        if (haproxy!.exitCode !== null) throw new Error(`haproxy exited: ${output.join("")}`);
        const s = await servers().catch(() => null);
        return s && s.size === 3 && [...s.values()].every((v) => v.status === "UP");
      },
      15_000,
      100,
    );
    return { daemons: first, ports, url: `http://127.0.0.1:${listen}`, wsUrl: `ws://127.0.0.1:${listen}`, servers };
  })();
  return started;
}

/** `n` log records through a producer session on the balancer, paced so the load spans `ms`. */
async function produceLogs(
  wsUrl: string,
  producer: string,
  n: number,
  ms: number,
  onEvent: (e: { type: string; code?: number }) => void = () => undefined,
) {
  const p = new Producer({
    url: wsUrl,
    stream: "logs",
    producer,
    maxBatchRecords: 50,
    initialDelayMs: 50,
    maxDelayMs: 500,
    giveUpAfterMs: 30_000,
    onEvent,
  });
  const outcomes: Array<Promise<{ status: string }>> = [];
  const chunk = 50;
  for (let i = 0; i < n; i += chunk) {
    for (let j = i; j < Math.min(n, i + chunk); j++) {
      const { outcome } = await p.enqueue({ service_name: "lb", severity: "INFO", message: `${producer}-${j}` });
      outcomes.push(outcome);
    }
    await new Promise((r) => setTimeout(r, (ms * chunk) / n));
  }
  const settled = await Promise.all(outcomes);
  await p.close();
  return settled.map((o) => o.status);
}

/**
 * `requests` HTTP requests of 20 `events` through the balancer, paced over `ms`. With `retry`, a request
 * that was not answered 200 is sent again (the same event ids: deduplication makes that safe); without,
 * it is counted as refused.
 */
async function produceHttp(url: string, tag: string, requests: number, ms: number, retry: boolean) {
  const acked: string[] = [];
  const refused: string[] = [];
  for (let i = 0; i < requests; i++) {
    const ids = Array.from({ length: 20 }, (_, j) => `${tag}-${i}-${j}`);
    const body = JSON.stringify(ids.map((id) => event(id)));
    for (let attempt = 0; ; attempt++) {
      const res = await post(`${url}/v1/streams/events/events`, body).catch((err: Error) => ({ status: 0, text: err.message }));
      if (res.status === 200) {
        acked.push(...ids);
        break;
      }
      if (!retry || attempt >= 50) {
        refused.push(`${res.status} ${res.text}`);
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, ms / requests));
  }
  return { acked, refused };
}

async function logCounts(prefix: string) {
  const { rows } = await fx.db.query(
    `SELECT count(*)::int AS total, count(DISTINCT message)::int AS distinct FROM logs WHERE message LIKE $1 || '%'`,
    [prefix],
  );
  return rows[0] as { total: number; distinct: number };
}

async function eventCounts(prefix: string, ids: string[]) {
  const { rows } = await fx.db.query(
    `SELECT count(*)::int AS total, count(DISTINCT event_id)::int AS distinct,
            count(*) FILTER (WHERE event_id = ANY($2))::int AS acked
       FROM events WHERE event_id LIKE $1 || '%'`,
    [prefix, ids],
  );
  return rows[0] as { total: number; distinct: number; acked: number };
}

describe("three daemons behind HAProxy on one PostgreSQL", () => {
  test("HAProxy runs the shipped configuration; a request through it is stored; WebSocket passes through", async (t) => {
    const c = await cluster(t);
    if (!c) return;
    // The file as shipped, unmodified, is valid for the installed HAProxy too (as /etc/haproxy/haproxy.cfg).
    const shipped = spawnSync("haproxy", ["-c", "-f", HAPROXY_CFG], { encoding: "utf8" });
    assert.equal(shipped.status, 0, `${shipped.stdout}${shipped.stderr}`);
    const res = await post(`${c.url}/v1/streams/events/events`, JSON.stringify([event("lb-smoke-1")]));
    assert.equal(res.status, 200, res.text);
    const health = await get(`${c.url}/health`);
    assert.equal(health.status, 200);
    const statuses = await produceLogs(c.wsUrl, "lb-smoke", 20, 0);
    assert.deepEqual(new Set(statuses), new Set(["accepted"]));
    assert.deepEqual(await logCounts("lb-smoke-"), { total: 20, distinct: 20 });
    // Three daemons started at once all ran the schema and partition maintenance: the advisory lock
    // serialised them, so none failed and each partition exists once.
    for (const d of c.daemons) {
      assert.ok(!d.output.some((l) => /maintenance failed|"level":"(error|fatal)"/.test(l)), `daemon on ${d.port}: ${d.output.join("\n")}`);
    }
    const { rows } = await fx.db.query(
      `SELECT count(*)::int AS n, count(DISTINCT c.relname)::int AS distinct FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('events', 'logs', 'ingest_batches')`,
    );
    assert.ok(rows[0].n >= 3 && rows[0].n === rows[0].distinct, JSON.stringify(rows[0]));
  });

  test("a request answered 202 by one daemon is pending, then committed, on the other two", async (t) => {
    const c = await cluster(t);
    if (!c) return;
    const [a, b, d] = c.daemons;
    // Hold every commit into events: the request stays pending until the lock is released.
    const lock = new pg.Client({ connectionString: fx.db.url });
    clients.push(lock);
    await lock.connect();
    await lock.query("BEGIN");
    await lock.query("LOCK TABLE events_dedup IN ACCESS EXCLUSIVE MODE");
    let released = false;
    try {
      const res = await post(
        `${a.base}/v1/streams/events/events`,
        JSON.stringify([event("lb-async-1"), event("lb-async-2")]),
        "application/json",
        {
          prefer: "respond-async",
        },
      );
      assert.equal(res.status, 202, res.text);
      const id = res.json.batch_id;
      const envelope = await post(
        `${a.base}/v1/ingest/batch`,
        JSON.stringify({ batch_id: "lb-producer-batch", events: [event("lb-async-3")] }),
        "application/json",
        { prefer: "respond-async" },
      );
      assert.equal(envelope.status, 202, envelope.text);
      for (const other of [b, d]) {
        const s = await get(`${other.base}/v1/batches/${id}`);
        assert.equal(s.status, 200, `daemon on ${other.port}: ${s.text}`);
        assert.deepEqual([s.json.status, s.json.batch_id, s.json.stream, s.json.committed_at], ["pending", id, "events", null]);
        // The producer's own batch_id is known once a worker of the first daemon has read the envelope.
        const byProducerId = await waitFor(`lb-producer-batch pending on ${other.port}`, async () => {
          const r = await get(`${other.base}/v1/batch/lb-producer-batch/status`);
          return r.status === 200 ? r.json : null;
        });
        assert.equal(byProducerId.status, "pending");
      }
      await lock.query("COMMIT");
      released = true;
      for (const other of [b, d]) {
        const settled = await waitFor(`batch ${id} committed on ${other.port}`, async () => {
          const r = await get(`${other.base}/v1/batches/${id}`);
          return r.status === 200 && r.json.status !== "pending" ? r.json : null;
        });
        assert.deepEqual([settled.status, settled.received, settled.accepted], ["committed", 2, 2]);
        const byProducerId = await waitFor(`lb-producer-batch committed on ${other.port}`, async () => {
          const r = await get(`${other.base}/v1/batches/lb-producer-batch`);
          return r.status === 200 && r.json.status !== "pending" ? r.json : null;
        });
        assert.deepEqual([byProducerId.status, byProducerId.accepted], ["committed", 1]);
      }
      const stored = await fx.db.query(`SELECT count(*)::int AS n FROM events WHERE event_id LIKE 'lb-async-%'`);
      assert.equal(stored.rows[0].n, 3);
    } finally {
      if (!released) await lock.query("COMMIT");
    }
  });

  test("one daemon killed with SIGKILL under load, then restarted: every acknowledged record stored, none twice", async (t) => {
    const c = await cluster(t);
    if (!c) return;
    const victim = 1;
    const before = (await c.servers()).get("ingestd2")!.stot;
    const PER_PRODUCER = 2000;
    const logs = [0, 1, 2].map((i) => produceLogs(c.wsUrl, `lb-kill-${i}`, PER_PRODUCER, 4000));
    const http = [0, 1].map((i) => produceHttp(c.url, `lb-kill-h${i}`, 60, 4000, true));

    await new Promise((r) => setTimeout(r, 1200));
    const served = (await c.servers()).get("ingestd2")!.stot - before;
    assert.ok(served > 0, "the daemon about to be killed was serving the load");
    const killed = await c.daemons[victim].kill("SIGKILL");
    assert.equal(killed.signal, "SIGKILL");
    await waitFor(
      "HAProxy to take the killed daemon out",
      async () => (await c.servers()).get("ingestd2")!.status.startsWith("DOWN"),
      10_000,
      100,
    );
    c.daemons[victim] = await fx.startDaemon({ env: daemonEnv(c.ports[victim]) });
    await waitFor(
      "HAProxy to take the restarted daemon back",
      async () => (await c.servers()).get("ingestd2")!.status === "UP",
      15_000,
      100,
    );

    const statuses = await Promise.all(logs);
    for (const [i, s] of statuses.entries()) {
      assert.equal(s.length, PER_PRODUCER);
      const notStored = s.filter((x) => x !== "accepted" && x !== "committed");
      assert.deepEqual(notStored, [], `producer lb-kill-${i}: every record acknowledged as stored`);
      // logs has no event id: only the producer session keeps a resent frame from being stored twice.
      assert.deepEqual(await logCounts(`lb-kill-${i}-`), { total: PER_PRODUCER, distinct: PER_PRODUCER }, `producer lb-kill-${i}`);
    }
    for (const [i, h] of (await Promise.all(http)).entries()) {
      assert.deepEqual(h.refused, [], `HTTP producer ${i} gave up on no request`);
      assert.equal(h.acked.length, 60 * 20);
      assert.deepEqual(await eventCounts(`lb-kill-h${i}-`, h.acked), { total: 1200, distinct: 1200, acked: 1200 });
    }
  });

  test("SIGTERM to one daemon under load: HAProxy sees 503 draining and takes it out, producers move on, nothing refused", async (t) => {
    const c = await cluster(t);
    if (!c) return;
    const victim = 2;
    const name = "ingestd3";
    const before = (await c.servers()).get(name)!.stot;
    const closes: number[] = [];
    const PER_PRODUCER = 2000;
    const logs = [0, 1, 2].map((i) =>
      produceLogs(c.wsUrl, `lb-term-${i}`, PER_PRODUCER, 6000 + drainDelayMs(), (e) => {
        if (e.type === "disconnected") closes.push(e.code!);
      }),
    );
    const http = [0, 1].map((i) => produceHttp(c.url, `lb-term-h${i}`, 60, 6000 + drainDelayMs(), false));

    await new Promise((r) => setTimeout(r, 1200));
    assert.ok((await c.servers()).get(name)!.stot > before, "the daemon about to be stopped was serving the load");
    const sentAt = Date.now();
    c.daemons[victim].child.kill("SIGTERM");
    // While it still serves (the drain delay), its /health answers 503 and the check takes it out.
    const down = await waitFor(
      "HAProxy to take the draining daemon out on its 503",
      async () => {
        const s = (await c.servers()).get(name)!;
        return s.status.startsWith("DOWN") ? s : null;
      },
      drainDelayMs(),
      50,
    );
    const outAfterMs = Date.now() - sentAt;
    assert.equal(down.check_status, "L7STS", `taken out by an HTTP status, not a refused connection: ${JSON.stringify(down)}`);
    assert.equal(down.check_code, "503");
    assert.ok(outAfterMs < drainDelayMs(), `out after ${outAfterMs} ms, before the drain delay ended`);
    const exit = await c.daemons[victim].exited;
    assert.equal(exit.code, 0, "the drain finished cleanly");

    const statuses = await Promise.all(logs);
    for (const [i, s] of statuses.entries()) {
      assert.deepEqual(
        s.filter((x) => x !== "accepted" && x !== "committed"),
        [],
        `producer lb-term-${i}`,
      );
      assert.deepEqual(await logCounts(`lb-term-${i}-`), { total: PER_PRODUCER, distinct: PER_PRODUCER }, `producer lb-term-${i}`);
    }
    for (const [i, h] of (await Promise.all(http)).entries()) {
      assert.deepEqual(h.refused, [], `HTTP producer ${i}: nothing refused`);
      assert.deepEqual(await eventCounts(`lb-term-h${i}-`, h.acked), { total: 1200, distinct: 1200, acked: 1200 });
    }
    t.diagnostic(`taken out ${outAfterMs} ms after SIGTERM; WebSocket closes seen by the producers: ${JSON.stringify(closes)}`);
  });
});

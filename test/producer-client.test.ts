/**
 * The producer client (`ingestd/client`) end to end against the real daemon and PostgreSQL, on the `logs`
 * stream (no event-id deduplication: only the producer session keeps records from being stored twice).
 * Faults while it sends: the daemon SIGKILLed and restarted, PostgreSQL stopped for ~10 s, the connection
 * cut mid-frame and mid-ack by a TCP proxy, the producer process itself killed and restarted with a spool.
 * Each run counts the rows: none lost, none doubled.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { Producer, type RecordOutcome } from "../src/client";
import { useTestDb } from "./fixture";
import { ROOT, type Daemon } from "./harness";
import { startProxy, type TcpProxy } from "./tcp-proxy";

let daemon: Daemon;
let proxy: TcpProxy;
const ENV = { WS_WINDOW: "8", OVERLOAD_DEADLINE_MS: "3000" };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function producerFor(tag: string, extra: Partial<ConstructorParameters<typeof Producer>[0]> = {}): Producer {
  return new Producer({
    url: `ws://127.0.0.1:${proxy.port}`,
    stream: "logs",
    producer: `client-${tag}`,
    maxBatchRecords: 200,
    maxBufferedRecords: 2000,
    initialDelayMs: 50,
    maxDelayMs: 500,
    ...extra,
  });
}

/** Sends `n` records `${tag}-${i}`, about `perTick` every 10 ms, and waits for every outcome. */
async function sendPaced(p: Producer, tag: string, n: number, perTick: number): Promise<RecordOutcome[]> {
  const outcomes: Array<Promise<RecordOutcome>> = [];
  for (let i = 0; i < n; i++) {
    const { outcome } = await p.enqueue({ service_name: "client", severity: "INFO", message: `${tag}-${i}` });
    outcomes.push(outcome);
    if (i % perTick === perTick - 1) await sleep(10);
  }
  await p.flush();
  return Promise.all(outcomes);
}

async function counts(tag: string): Promise<{ total: number; distinct: number }> {
  const res = await fx.db.query(
    "SELECT count(*)::int AS total, count(DISTINCT message)::int AS distinct FROM logs WHERE message LIKE $1 || '-%'",
    [tag],
  );
  return res.rows[0];
}

/** Every record stored; else the first outcomes that say otherwise. */
function stored(outcomes: RecordOutcome[]): void {
  const other = outcomes.map((o, i) => [i, o] as const).filter(([, o]) => o.status !== "accepted" && o.status !== "committed");
  assert.deepEqual(other.slice(0, 3), []);
}

function run(file: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** A database, a daemon on it behind a TCP proxy the tests cut; restarted daemons come from fx too. */
const fx = useTestDb();
fx.setup(async () => {
  daemon = await fx.startDaemon({ env: ENV });
  proxy = await startProxy(daemon.port);
});
fx.teardown(() => proxy?.close());

describe("producer client", () => {
  test("batches, resolves each record with its outcome (a rejection names the field), flush waits for every ack", async () => {
    const p = producerFor("basic");
    const bad = p.send({ service_name: "client", severity: "LOUD", message: "basic-bad" });
    const outcomes = await sendPaced(p, "basic", 3000, 1000);
    stored(outcomes);
    const rejected = await bad;
    assert.equal(rejected.status, "rejected");
    assert.match((rejected as any).errors[0].path, /severity/);
    await p.close();
    assert.deepEqual(await counts("basic"), { total: 3000, distinct: 3000 });
  });

  test("ingestd/client loads neither uWebSockets.js nor piscina", () => {
    const script = `const c = require("ingestd/client"); if (typeof c.Producer !== "function") process.exit(3);
      const bad = Object.keys(require.cache).filter((f) => /uWebSockets|uws-js|piscina|[\\\\/]front[\\\\/]|[\\\\/]workers[\\\\/]/.test(f));
      console.log(JSON.stringify(bad));`;
    const out = spawnSync(process.execPath, ["-e", script], { cwd: ROOT, encoding: "utf8" });
    assert.equal(out.status, 0, out.stderr);
    assert.deepEqual(JSON.parse(out.stdout), []);
  });

  test("daemon SIGKILLed at random moments and restarted while sending: none lost, none doubled", async () => {
    const p = producerFor("kill");
    const sending = sendPaced(p, "kill", 12_000, 200);
    for (let k = 0; k < 3; k++) {
      await sleep(300 + Math.random() * 700);
      await daemon.kill("SIGKILL");
      daemon = await fx.startDaemon({ env: ENV });
      proxy.target = daemon.port;
    }
    const outcomes = await sending;
    stored(outcomes);
    await p.close();
    assert.deepEqual(await counts("kill"), { total: 12_000, distinct: 12_000 });
  });

  test("connection cut mid-frame and mid-ack, again and again: none lost, none doubled", async () => {
    const p = producerFor("cut");
    let done = false;
    const sending = sendPaced(p, "cut", 10_000, 50).finally(() => (done = true));
    const before = proxy.counts().trapped;
    // Alternately a frame (client to daemon) and an ack (daemon to client) broken off at a random byte.
    for (let k = 0; !done && k < 12; k++) {
      proxy.cutAfter(k % 2 === 0 ? "up" : "down", 1 + Math.floor(Math.random() * (k % 2 === 0 ? 20_000 : 300)));
      while (!done && proxy.armed()) await sleep(20);
      await sleep(100);
    }
    const outcomes = await sending;
    proxy.disarm();
    stored(outcomes);
    await p.close();
    const cuts = proxy.counts().trapped - before;
    assert.ok(cuts >= 6, `only ${cuts} cuts happened`);
    assert.deepEqual(await counts("cut"), { total: 10_000, distinct: 10_000 });
  });

  test("a connection gone silent (acks never arrive) is dropped and its frames resent: none lost, none doubled", async () => {
    const p = producerFor("silent", { silenceTimeoutMs: 800 });
    const before = proxy.counts().connections;
    const sending = sendPaced(p, "silent", 4000, 100);
    await sleep(300);
    proxy.freezeDown();
    const outcomes = await sending;
    stored(outcomes);
    await p.close();
    assert.ok(proxy.counts().connections >= before + 2, "the client never reconnected");
    assert.deepEqual(await counts("silent"), { total: 4000, distinct: 4000 });
  });

  test("PostgreSQL stopped for ~10 s under load: the client waits, none lost, none doubled", async () => {
    const p = producerFor("pgdown");
    const started = Date.now();
    const sending = sendPaced(p, "pgdown", 8000, 200);
    await sleep(500);
    await fx.db.server.stop();
    await sleep(10_000);
    await fx.db.server.restart();
    const outcomes = await sending;
    stored(outcomes);
    assert.ok(Date.now() - started >= 10_000, "finished while PostgreSQL was down");
    await p.close();
    assert.deepEqual(await counts("pgdown"), { total: 8000, distinct: 8000 });
  });

  test("producer process with a spool killed and restarted: what was never acknowledged is sent, once", async () => {
    const spool = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-spool-"));
    const child = path.join(ROOT, "dist/test/spool-producer-child.js");
    const env = { ...process.env, URL: `ws://127.0.0.1:${proxy.port}`, PRODUCER: "spool-child", SPOOL: spool, TAG: "spool" };
    // First run: killed once it has some acks and more frames out.
    const first = spawn(process.execPath, [child], { env: { ...env, FROM: "0", TO: "20000" }, stdio: ["ignore", "pipe", "inherit"] });
    let acked = 0;
    let highest = -1;
    await new Promise<void>((resolve) => {
      let buf = "";
      first.stdout!.on("data", (chunk: Buffer) => {
        buf += chunk.toString();
        for (const m of buf.matchAll(/acked (\d+) (\d+)/g)) {
          acked = Number(m[1]);
          highest = Number(m[2]);
        }
        buf = buf.slice(buf.lastIndexOf("\n") + 1);
        if (acked >= 3000 && first.exitCode === null && !first.killed) {
          // Frames from now on are spooled and sent, but never reach the daemon: never acknowledged.
          proxy.blackhole("up", true);
          setTimeout(() => {
            first.kill("SIGKILL");
            resolve();
          }, 300);
        }
      });
      first.on("exit", () => resolve());
    });
    await new Promise((r) => (first.exitCode !== null || first.signalCode !== null ? r(null) : first.on("exit", r)));
    proxy.cutAll();
    proxy.blackhole("up", false);
    const before = (await counts("spool")).total;
    const leftover = fs.statSync(path.join(spool, "spool.log")).size;
    // Second run: nothing new, only the spool.
    // Not spawnSync: the proxy runs in this process.
    const second = await run(child, { ...env, FROM: "0", TO: "0" }, 30_000);
    assert.equal(second.status, 0, second.stderr);
    const res = await fx.db.query(
      "SELECT count(*)::int AS total, count(DISTINCT message)::int AS distinct, max(split_part(message, '-', 2)::int) AS top FROM logs WHERE message LIKE 'spool-%'",
    );
    const { total, distinct, top } = res.rows[0];
    assert.equal(total, distinct, "a record was stored twice");
    assert.equal(total, top + 1, "the stored records are not a prefix: one was lost");
    assert.ok(top >= highest, `record ${highest} was acknowledged but not stored`);
    assert.ok(leftover > 0, "the killed producer left nothing in its spool");
    const connected = JSON.parse(/event (\{"type":"connected".*)/.exec(second.stdout)![1]);
    assert.ok(connected.resent > 0, "the restarted producer had nothing to resend");
    assert.ok(total > before, "the restarted producer stored nothing");
    fs.rmSync(spool, { recursive: true, force: true });
  });
});

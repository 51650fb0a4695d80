/**
 * API keys (docs/security.md, issue 6 item 5) against the real daemon and PostgreSQL: 401 / 403 / 200 per header
 * style and route, the TPC-H line endpoints' permission, open read-only endpoints, WebSocket upgrades
 * (headers and ?token=), SIGHUP reload (add, remove, bad file kept out), open mode's warning, a bad keys
 * file at start (exit 78), and a scan of everything the daemon printed for the keys it was given.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { CLI, ROOT, event, get, post, waitFor } from "./harness";
import { connectWs, keysFileJson, logEntries, newKey, tempDir, writeAtomic, type TestKey } from "./security-helpers";

const writer = newKey("writer", ["events"]);
const logsOnly = newKey("logs-only", ["logs"]);
const star = newKey("star", ["*"]);
const tpch = newKey("tpch-alias", ["tpch"]);
const tpchFour = newKey("tpch-four", ["orders", "lineitem", "customer", "part"]);
const ordersOnly = newKey("orders-only", ["orders"]);
const later = newKey("added-later", ["events"]);
/** Never configured anywhere: must get 401. */
const stranger = newKey("stranger", ["*"]);
/** Every key this file ever shows the daemon, for the final log scan. */
const allKeys: TestKey[] = [writer, logsOnly, star, tpch, tpchFour, ordersOnly, later, stranger];
const initial = [writer, logsOnly, star, tpch, tpchFour, ordersOnly];

const bearer = (k: TestKey) => ({ authorization: `Bearer ${k.token}` });
const xApiKey = (k: TestKey) => ({ "x-api-key": k.token });
const json = "application/json";

let orderKey = 1000;
const orderLine = () => `O|${++orderKey}|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|nstructions sleep furiously`;

let dir: string;
/** The keys file the daemon reads; the reload tests rewrite it. */
let keysFile: string;
/** A database, and a daemon reading a keys file of the `initial` keys, written in a temporary directory. */
const fx = useDaemon({
  env: () => {
    dir = tempDir("ingestd-sec-auth-");
    keysFile = path.join(dir, "keys.json");
    fs.writeFileSync(keysFile, keysFileJson(initial));
    // trace: the most the daemon ever logs, so the final scan covers every log statement that runs.
    return { API_KEYS_FILE: keysFile, LOG_LEVEL: "trace" };
  },
});
after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function eventIds(prefix: string): Promise<string[]> {
  const res = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

describe("HTTP ingest routes", () => {
  test("no key and a wrong key get 401 with a Bearer challenge on every ingest route; nothing is stored", async () => {
    const routes: Array<[string, string, string]> = [
      ["/v1/streams/events/events", json, JSON.stringify(event("unauth-1"))],
      ["/v1/ingest/batch", json, JSON.stringify({ events: [event("unauth-2")] })],
      [
        "/events",
        json,
        JSON.stringify({ event_id: "7f1c0d2e-1111-4a4a-8b8b-000000000001", user_id: "u", event_type: "t", event_time: 1, properties: {} }),
      ],
      ["/ingest/message", "text/plain", orderLine()],
      ["/ingest/batch", "text/plain", orderLine()],
      ["/ingest/stream", "text/plain", `${orderLine()}\n`],
    ];
    for (const [route, type, body] of routes) {
      for (const headers of [
        {},
        bearer(stranger),
        xApiKey(stranger),
        { authorization: "Bearer " },
        { authorization: `Basic ${Buffer.from("a:b").toString("base64")}` },
      ]) {
        const res = await post(`${fx.daemon.base}${route}`, body, type, headers);
        assert.equal(res.status, 401, `${route} ${JSON.stringify(Object.keys(headers))}: ${res.text}`);
        assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="ingestd"');
        assert.equal(res.json.error, "unauthorized");
      }
    }
    assert.deepEqual(await eventIds("unauth-"), []);
  });

  test("Authorization: Bearer and X-API-Key are both accepted (200, rows stored)", async () => {
    const a = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hdr-bearer")), json, bearer(writer));
    assert.equal(a.status, 200, a.text);
    const b = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hdr-xkey")), json, xApiKey(writer));
    assert.equal(b.status, 200, b.text);
    // The scheme name is case-insensitive (RFC 9110).
    const c = await post(`${fx.daemon.base}/v1/ingest/batch`, JSON.stringify({ events: [event("hdr-lower")] }), json, {
      authorization: `bearer ${writer.token}`,
    });
    assert.equal(c.status, 200, c.text);
    assert.deepEqual(await eventIds("hdr-"), ["hdr-bearer", "hdr-lower", "hdr-xkey"]);
  });

  test("403 for a stream the key may not write; '*' writes every stream", async () => {
    const logRecord = JSON.stringify({ service_name: "svc", severity: "INFO", message: "hello" });
    const denied = await post(`${fx.daemon.base}/v1/streams/logs/events`, logRecord, json, bearer(writer));
    assert.equal(denied.status, 403, denied.text);
    assert.equal(denied.json.error, "forbidden");
    assert.match(denied.json.message, /writer may not write stream logs/);
    const deniedEvents = await post(
      `${fx.daemon.base}/v1/streams/events/events`,
      JSON.stringify(event("forbid-1")),
      json,
      bearer(logsOnly),
    );
    assert.equal(deniedEvents.status, 403);
    const productEvent = JSON.stringify({
      event_id: "7f1c0d2e-1111-4a4a-8b8b-000000000002",
      user_id: "u",
      event_type: "t",
      event_time: 1,
      properties: {},
    });
    assert.equal((await post(`${fx.daemon.base}/events`, productEvent, json, bearer(writer))).status, 403);
    assert.equal((await post(`${fx.daemon.base}/v1/streams/logs/events`, logRecord, json, bearer(logsOnly))).status, 200);
    assert.equal((await post(`${fx.daemon.base}/v1/streams/logs/events`, logRecord, json, bearer(star))).status, 200);
    assert.equal((await post(`${fx.daemon.base}/events`, productEvent, json, xApiKey(star))).status, 200);
    assert.deepEqual(await eventIds("forbid-"), []);
    // An unknown stream is still 404 for a valid key (authentication first, then the stream, then permission).
    assert.equal((await post(`${fx.daemon.base}/v1/streams/nope/events`, "{}", json, bearer(writer))).status, 404);
  });

  test("TPC-H line endpoints need 'tpch', all four line streams, or '*'", async () => {
    for (const route of ["/ingest/message", "/ingest/batch"]) {
      assert.equal((await post(`${fx.daemon.base}${route}`, orderLine(), "text/plain", bearer(writer))).status, 403, route);
      // One line stream is not enough: a body may hold lines for any of the four.
      assert.equal((await post(`${fx.daemon.base}${route}`, orderLine(), "text/plain", bearer(ordersOnly))).status, 403, route);
      for (const key of [tpch, tpchFour, star]) {
        const res = await post(`${fx.daemon.base}${route}`, orderLine(), "text/plain", bearer(key));
        assert.equal(res.status, 200, `${route} ${key.id}: ${res.text}`);
      }
    }
    const stream = await post(`${fx.daemon.base}/ingest/stream`, `${orderLine()}\n${orderLine()}\n`, "text/plain", bearer(tpch));
    assert.equal(stream.status, 200, stream.text);
    assert.match(stream.text, /"inserted":2/);
    assert.equal((await post(`${fx.daemon.base}/ingest/stream`, `${orderLine()}\n`, "text/plain", bearer(ordersOnly))).status, 403);
    // A key for one line stream writes it through the canonical route; 'tpch' grants the four streams too.
    assert.equal((await post(`${fx.daemon.base}/v1/streams/orders/events`, orderLine(), "text/plain", bearer(ordersOnly))).status, 200);
    assert.equal((await post(`${fx.daemon.base}/v1/streams/orders/events`, orderLine(), "text/plain", bearer(tpch))).status, 200);
    assert.equal((await post(`${fx.daemon.base}/v1/streams/orders/events`, orderLine(), "text/plain", bearer(writer))).status, 403);
  });

  test("read-only endpoints stay open without a key", async () => {
    for (const p of ["/health", "/v1/health", "/metrics", "/stats", "/v1/latency", "/openapi.json"]) {
      const res = await get(`${fx.daemon.base}${p}`);
      assert.equal(res.status, 200, `${p}: ${res.text.slice(0, 200)}`);
    }
    const accepted = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("ro-batch")), json, bearer(writer));
    const status = await get(`${fx.daemon.base}/v1/batches/${accepted.json.batch_id}`);
    assert.equal(status.status, 200, status.text);
    assert.equal(status.json.status, "committed");
  });
});

describe("WebSocket upgrade", () => {
  const url = () => `${fx.daemon.wsBase}/v1/ws?stream=events`;

  test("Bearer header, X-API-Key header and ?token= each open a stream whose frames are acked", async () => {
    const variants: Array<[string, { url: string; headers: Record<string, string> }]> = [
      ["bearer", { url: url(), headers: bearer(writer) }],
      ["xkey", { url: url(), headers: xApiKey(writer) }],
      ["query", { url: `${url()}&token=${encodeURIComponent(writer.token)}`, headers: {} }],
    ];
    for (const [name, v] of variants) {
      const c = await connectWs(v.url, { headers: v.headers });
      assert.equal(c.hello.type, "hello");
      c.socket.send(JSON.stringify(event(`ws-auth-${name}`)));
      const [ack] = await c.waitForAcks(1);
      assert.equal(ack.accepted, 1, name);
      c.socket.close();
    }
    assert.deepEqual(await eventIds("ws-auth-"), ["ws-auth-bearer", "ws-auth-query", "ws-auth-xkey"]);
  });

  test("no key or a wrong key is refused at the upgrade with 401; a stream not allowed with 403", async () => {
    await assert.rejects(
      connectWs(url()),
      (err: any) => err.status === 401 && err.headers["www-authenticate"] === 'Bearer realm="ingestd"',
    );
    await assert.rejects(connectWs(`${url()}&token=${stranger.token}`), (err: any) => err.status === 401);
    await assert.rejects(connectWs(url(), { headers: bearer(stranger) }), (err: any) => err.status === 401);
    await assert.rejects(connectWs(`${fx.daemon.wsBase}/v1/ws?stream=events&token=${logsOnly.token}`), (err: any) => err.status === 403);
    const ok = await connectWs(`${fx.daemon.wsBase}/v1/ws?stream=logs&token=${logsOnly.token}`);
    assert.equal(ok.hello.stream, "logs");
    ok.socket.close();
  });
});

describe("SIGHUP reload", () => {
  async function reload(): Promise<any> {
    const before = logEntries(fx.daemon.output).filter((e) => /^API keys reload/.test(e.msg ?? "")).length;
    fx.daemon.child.kill("SIGHUP");
    return waitFor("a reload log line", () => logEntries(fx.daemon.output).filter((e) => /^API keys reload/.test(e.msg ?? ""))[before]);
  }

  test("a key added to the file works after SIGHUP, a removed one stops working, without a restart", async () => {
    const pid = fx.daemon.child.pid;
    assert.equal(
      (await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-0")), json, bearer(later))).status,
      401,
    );
    const revokedWs = await connectWs(`${fx.daemon.wsBase}/v1/ws?stream=logs&token=${logsOnly.token}`);
    const keptWs = await connectWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, { headers: bearer(writer) });
    // `later` added, `logsOnly` removed.
    writeAtomic(keysFile, keysFileJson([...initial.filter((k) => k !== logsOnly), later]));
    const line = await reload();
    assert.equal(line.msg, "API keys reloaded");
    assert.equal(line.keys, initial.length);
    const added = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-1")), json, bearer(later));
    assert.equal(added.status, 200, added.text);
    const logRecord = JSON.stringify({ service_name: "svc", severity: "INFO", message: "gone" });
    assert.equal((await post(`${fx.daemon.base}/v1/streams/logs/events`, logRecord, json, bearer(logsOnly))).status, 401);
    await assert.rejects(connectWs(`${fx.daemon.wsBase}/v1/ws?stream=logs&token=${logsOnly.token}`), (err: any) => err.status === 401);
    // A live WebSocket of the removed key is cut off (1008); one of a kept key goes on.
    assert.equal((await revokedWs.closed).code, 1008);
    keptWs.socket.send(JSON.stringify(event("hup-ws")));
    assert.equal((await keptWs.waitForAcks(1))[0].accepted, 1);
    keptWs.socket.close();
    // Unchanged keys keep working; same process throughout.
    assert.equal(
      (await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-2")), json, bearer(writer))).status,
      200,
    );
    assert.equal(fx.daemon.child.pid, pid);
    assert.equal(fx.daemon.child.exitCode, null);
    assert.deepEqual(await eventIds("hup-"), ["hup-1", "hup-2", "hup-ws"]);
  });

  test("a bad file on reload is refused: the old keys stay in force and the error names the field", async () => {
    const good = fs.readFileSync(keysFile, "utf8");
    // A raw key pasted into `hash` by mistake: refused, and the error must not echo it.
    const bad = JSON.parse(good);
    bad.keys[0].hash = stranger.token;
    bad.keys[1].streams = ["nosuchstream"];
    writeAtomic(keysFile, JSON.stringify(bad));
    const line = await reload();
    assert.equal(line.msg, "API keys reload failed: keeping the keys loaded before");
    assert.equal(line.level, "error");
    assert.match(line.err, /keys\[0\]\.hash/);
    assert.ok(!line.err.includes(stranger.token));
    assert.equal(
      (await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-bad-1")), json, bearer(later))).status,
      200,
    );
    assert.equal(
      (await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-bad-2")), json, bearer(stranger))).status,
      401,
    );

    writeAtomic(keysFile, "{ not json");
    const syntax = await reload();
    assert.equal(syntax.level, "error");
    assert.equal(
      (await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify(event("hup-bad-3")), json, bearer(writer))).status,
      200,
    );

    writeAtomic(keysFile, good);
    assert.equal((await reload()).msg, "API keys reloaded");
  });
});

describe("configuration", () => {
  test("with no keys configured the daemon runs open and says so loudly at start", async () => {
    const open = await fx.startDaemon({ env: { API_KEYS_FILE: "", INGESTD_API_KEYS: "" } });
    try {
      const warning = logEntries(open.output).find((e) => e.auth === "open");
      assert.ok(warning, open.output.join("\n"));
      assert.equal(warning.level, "warn");
      assert.match(warning.msg, /NO API KEYS CONFIGURED/);
      const res = await post(`${open.base}/v1/streams/events/events`, JSON.stringify(event("open-1")));
      assert.equal(res.status, 200, res.text);
      const c = await connectWs(`${open.wsBase}/v1/ws?stream=events`);
      c.socket.close();
    } finally {
      await open.stop();
    }
    // The keyed daemon said which keys it loaded (by id), and did not warn.
    const loaded = logEntries(fx.daemon.output).find((e) => e.msg === "API keys loaded");
    assert.ok(loaded);
    assert.deepEqual(
      loaded.key_ids,
      initial.map((k) => k.id),
    );
    assert.equal(
      logEntries(fx.daemon.output).find((e) => e.auth === "open"),
      undefined,
    );
  });

  test("a bad keys file at start is a configuration error: exit 78, naming the field (serve and check-config)", async () => {
    const badFile = path.join(dir, "bad-keys.json");
    fs.writeFileSync(badFile, JSON.stringify({ keys: [{ id: "p", hash: "sha256:" + "0".repeat(64), streams: ["events"], rate: -5 }] }));
    for (const args of [["serve"], ["check-config"]]) {
      const child = spawn(process.execPath, [CLI, ...args], {
        cwd: ROOT,
        env: { ...process.env, DATABASE_URL: fx.db.url, HOST: "127.0.0.1", PORT: "0", API_KEYS_FILE: badFile },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stderr = "";
      child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
      const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
      assert.equal(code, 78, `${args[0]}: ${stderr}`);
      assert.match(stderr, /keys\[0\]\.rate/);
    }
    // INGESTD_API_KEYS is checked the same way.
    const child = spawn(process.execPath, [CLI, "check-config"], {
      cwd: ROOT,
      env: { ...process.env, INGESTD_API_KEYS: "p:deadbeef:events" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    assert.equal(await new Promise((resolve) => child.on("exit", resolve)), 78);
    assert.match(stderr, /INGESTD_API_KEYS[\s\S]*keys\[0\]\.hash/);
  });
});

describe("secrets", () => {
  test("no key ever appears in the daemon's output or in /metrics", async () => {
    const metrics = await get(`${fx.daemon.base}/metrics`);
    const stats = await get(`${fx.daemon.base}/stats`);
    await fx.daemon.stop();
    const output = fx.daemon.output.join("\n");
    assert.ok(output.length > 1000, "the daemon logged something to scan");
    for (const k of allKeys) {
      assert.ok(!output.includes(k.token), `key ${k.id} appears in the daemon's output`);
      assert.ok(!metrics.text.includes(k.token), `key ${k.id} appears in /metrics`);
      assert.ok(!stats.text.includes(k.token), `key ${k.id} appears in /stats`);
      // Not even the secret part without its prefix.
      assert.ok(!output.includes(k.token.slice(4)), `key ${k.id} (without prefix) appears in the daemon's output`);
    }
  });
});

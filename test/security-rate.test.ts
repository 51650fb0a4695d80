/**
 * Per-key rate limits (docs/security.md, issue 6 item 6) against the real daemon and PostgreSQL. Keys come from
 * INGESTD_API_KEYS here (the keys file is covered by security-auth). The bucket is charged after the
 * outcome (the front thread cannot count events before a worker has parsed them), so a key goes into debt
 * and its NEXT requests get 429 with Retry-After; on WebSocket its acks wait until the debt is paid.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, post } from "./harness";
import { connectWs, envKeys, newKey, type SecWs, type TestKey } from "./security-helpers";

const slow = newKey("slow-http", ["events"], 10); // burst defaults to one second: 10 events
const free = newKey("free", ["events", "tpch"]);
const wsSlow = newKey("ws-slow", ["events"], 2000, 100);
const wsFree = newKey("ws-free", ["events"]);
const lines = newKey("tpch-slow", ["tpch"], 5);

const WS_RATE = 2000;
const WS_BURST = 100;
const WINDOW = 16;

/** A database, and a daemon with these keys (INGESTD_API_KEYS) and a window of 16. */
const fx = useDaemon({ env: { INGESTD_API_KEYS: envKeys([slow, free, wsSlow, wsFree, lines]), WS_WINDOW: String(WINDOW) } });

const auth = (k: TestKey) => ({ authorization: `Bearer ${k.token}` });
const events = (prefix: string, n: number) =>
  JSON.stringify(Array.from({ length: n }, (_, i) => event(`${prefix}-${String(i).padStart(4, "0")}`)));

async function count(prefix: string): Promise<number> {
  const res = await fx.db.query("SELECT count(*)::int AS n FROM events WHERE event_id LIKE $1 || '%'", [prefix]);
  return res.rows[0].n;
}

describe("HTTP", () => {
  test("a key over its rate gets 429 with Retry-After, other keys do not, and it recovers after waiting", async () => {
    // 30 events against a bucket of 10 at 10/s: accepted (the bucket was not in debt), then 20 owed.
    const first = await post(`${fx.daemon.base}/v1/streams/events/events`, events("rl-a", 30), "application/json", auth(slow));
    assert.equal(first.status, 200, first.text);
    const refused = await post(`${fx.daemon.base}/v1/streams/events/events`, events("rl-b", 1), "application/json", auth(slow));
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.json.error, "rate_limited");
    const retryAfter = Number(refused.headers.get("retry-after"));
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 2, `Retry-After ${refused.headers.get("retry-after")}`);
    // Per key: another key is not affected.
    assert.equal((await post(`${fx.daemon.base}/v1/streams/events/events`, events("rl-c", 5), "application/json", auth(free))).status, 200);
    // Still in debt a moment later.
    assert.equal((await post(`${fx.daemon.base}/v1/streams/events/events`, events("rl-b", 1), "application/json", auth(slow))).status, 429);

    await new Promise((r) => setTimeout(r, retryAfter * 1000 + 100));
    const recovered = await post(`${fx.daemon.base}/v1/streams/events/events`, events("rl-d", 1), "application/json", auth(slow));
    assert.equal(recovered.status, 200, recovered.text);
    assert.equal(await count("rl-a"), 30);
    assert.equal(await count("rl-b"), 0, "refused requests store nothing");
    assert.equal(await count("rl-d"), 1);
  });

  test("the TPC-H line endpoints are limited the same way (/ingest/batch then /ingest/stream)", async () => {
    const body = Array.from({ length: 10 }, (_, i) => `O|${5000 + i}|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|x`).join("\n");
    const first = await post(`${fx.daemon.base}/ingest/batch`, body, "text/plain", auth(lines));
    assert.equal(first.status, 200, first.text);
    const stream = await post(
      `${fx.daemon.base}/ingest/stream`,
      "O|5100|100|O|1.00|1996-01-02|5-LOW|Clerk#1|0|x\n",
      "text/plain",
      auth(lines),
    );
    assert.equal(stream.status, 429, stream.text);
    assert.ok(Number(stream.headers.get("retry-after")) >= 1);
    const message = await post(
      `${fx.daemon.base}/ingest/message`,
      "O|5101|100|O|1.00|1996-01-02|5-LOW|Clerk#1|0|x",
      "text/plain",
      auth(lines),
    );
    assert.equal(message.status, 429);
  });
});

describe("WebSocket", () => {
  const FRAMES = 40;
  const PER_FRAME = 100;

  /** Sends FRAMES frames keeping within the window; resolves with the ms from first send to last ack. */
  async function run(c: SecWs, prefix: string): Promise<number> {
    const started = Date.now();
    let sent = 0;
    const sendUpTo = () => {
      while (sent < FRAMES && sent - c.acks.length < WINDOW) {
        c.socket.send(events(`${prefix}-${String(sent).padStart(3, "0")}`, PER_FRAME));
        sent++;
      }
    };
    c.socket.on("message", sendUpTo);
    sendUpTo();
    await c.waitForAcks(FRAMES, 60_000);
    return c.ackTimes[FRAMES - 1] - started;
  }

  test("acks of a key over its rate are delayed (not refused, not closed): N frames take about N*events/rate", async (t) => {
    const limited = await connectWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, { headers: auth(wsSlow) });
    const limitedMs = await run(limited, "wsr-slow");
    const unlimited = await connectWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, { headers: auth(wsFree) });
    const unlimitedMs = await run(unlimited, "wsr-free");

    // The first WS_BURST events are free; the rest are paid at WS_RATE per second.
    const expectedMs = ((FRAMES * PER_FRAME - WS_BURST) / WS_RATE) * 1000; // 1950 ms
    const report = `limited ${limitedMs} ms, unlimited ${unlimitedMs} ms, expected about ${expectedMs} ms`;
    t.diagnostic(report);
    assert.ok(limitedMs >= expectedMs * 0.7, report);
    assert.ok(limitedMs <= expectedMs + 8000, report);
    assert.ok(unlimitedMs < limitedMs, report);

    for (const c of [limited, unlimited]) {
      assert.deepEqual(
        c.acks.map((a) => a.seq),
        Array.from({ length: FRAMES }, (_, i) => i + 1),
      );
      assert.ok(c.acks.every((a) => a.accepted === PER_FRAME && a.rejected === 0));
      assert.equal(c.socket.readyState, c.socket.OPEN, "throttling never closes the connection");
    }
    // Acks spread over the interval rather than arriving in one lump at the end.
    const half = limited.ackTimes[FRAMES / 2 - 1] - limited.ackTimes[0];
    assert.ok(half >= expectedMs * 0.25, `half the acks within ${half} ms of the first`);
    assert.equal(await count("wsr-slow"), FRAMES * PER_FRAME);
    assert.equal(await count("wsr-free"), FRAMES * PER_FRAME);
    limited.socket.close();
    unlimited.socket.close();
  });
});

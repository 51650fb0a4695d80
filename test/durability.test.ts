/**
 * Durability (docs/storage.md, Durability and failure): what was acknowledged is in PostgreSQL whatever happens to the daemon afterwards,
 * SIGTERM drains and acknowledges before it exits, and a PostgreSQL outage delays acks without faking them.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { useTestDb } from "./fixture";
import { event, get, openWs, post, waitFor, type Daemon, type TestDb, type WsClient } from "./harness";

/** A database; each test starts its own daemon (launch), the outage tests a cluster of their own (fx.startDb). Daemons are killed (SIGKILL) in after(). */
const fx = useTestDb({ stopSignal: "SIGKILL" });
const clients: WsClient[] = [];
fx.teardown(() => {
  for (const c of clients) c.socket.terminate();
});

function launch(env: Record<string, string> = {}, on: TestDb = fx.db): Promise<Daemon> {
  return fx.startDaemon({ databaseUrl: on.url, env });
}

/** How many of `ids` are stored, and whether any is stored twice. */
async function stored(ids: string[], on: TestDb = fx.db): Promise<{ present: number; doubled: string[] }> {
  const res = await on.query("SELECT event_id, count(*)::int AS n FROM events WHERE event_id = ANY($1) GROUP BY event_id", [ids]);
  return { present: res.rows.length, doubled: res.rows.filter((r) => r.n > 1).map((r) => r.event_id) };
}

async function idsWithPrefix(prefix: string, on: TestDb = fx.db): Promise<string[]> {
  const res = await on.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' ORDER BY event_id", [prefix]);
  return res.rows.map((r) => r.event_id);
}

function frameIds(prefix: string, frame: number, perFrame: number): string[] {
  return Array.from({ length: perFrame }, (_, i) => `${prefix}-${frame}-${i}`);
}

interface WsProducer {
  client: WsClient;
  /** Ids of every frame whose ack arrived. */
  ackedIds: string[];
  ackedFrames: number;
  sentFrames: number;
  /** Set if an ack was out of order or its counts did not match the frame. */
  protocolError: string | null;
  /** Stops sending new frames (acks still arrive). */
  stop(): void;
  resume(): void;
}

/**
 * Streams frames of `perFrame` events continuously, keeping at most `window` frames unacknowledged,
 * until stopped, closed, or `maxFrames` sent.
 */
async function wsProducer(d: Daemon, prefix: string, perFrame: number, maxFrames: number): Promise<WsProducer> {
  const client = await openWs(`${d.wsBase}/v1/ws?stream=events`);
  clients.push(client);
  const window: number = client.hello.window;
  const frames = new Map<number, string[]>();
  let running = true;
  const p: WsProducer = {
    client,
    ackedIds: [],
    ackedFrames: 0,
    sentFrames: 0,
    protocolError: null,
    stop: () => {
      running = false;
    },
    resume: () => {
      running = true;
      pump();
    },
  };
  const pump = () => {
    while (
      running &&
      client.socket.readyState === client.socket.OPEN &&
      p.sentFrames - p.ackedFrames < window &&
      p.sentFrames < maxFrames
    ) {
      const seq = ++p.sentFrames;
      const ids = frameIds(prefix, seq, perFrame);
      frames.set(seq, ids);
      client.send(JSON.stringify(ids.map((id) => event(id))));
    }
  };
  // The harness's own listener has already appended the ack to client.acks when this one runs.
  client.socket.on("message", () => {
    const ack = client.acks[client.acks.length - 1];
    if (ack?.type !== "ack") return;
    const expectedSeq = p.ackedFrames + 1;
    const ids = frames.get(ack.seq);
    if (ack.seq !== expectedSeq) p.protocolError ??= `ack seq ${ack.seq}, expected ${expectedSeq}`;
    else if (!ids || ack.accepted !== ids.length)
      p.protocolError ??= `ack accepted ${ack.accepted} of ${ids?.length}: ${JSON.stringify(ack).slice(0, 500)}`;
    p.ackedFrames++;
    if (ids) p.ackedIds.push(...ids);
    setImmediate(pump);
  });
  pump();
  return p;
}

interface HttpProducer {
  ackedIds: string[];
  statuses: number[];
  failures: number;
  done: Promise<void>;
  stop(): void;
}

/** Posts requests of `perRequest` events one after another until stopped, the daemon is gone, or `max`. */
function httpProducer(d: Daemon, prefix: string, perRequest: number, max: number): HttpProducer {
  let running = true;
  const p: HttpProducer = {
    ackedIds: [],
    statuses: [],
    failures: 0,
    done: Promise.resolve(),
    stop: () => {
      running = false;
    },
  };
  p.done = (async () => {
    for (let r = 0; running && r < max; r++) {
      const ids = frameIds(prefix, r, perRequest);
      try {
        const res = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(ids.map((id) => event(id))));
        p.statuses.push(res.status);
        if (res.status === 200) p.ackedIds.push(...ids);
      } catch {
        p.failures++; // connection refused or reset: the daemon is gone
        return;
      }
    }
  })();
  return p;
}

describe("kill -9", () => {
  test("every event acknowledged (WebSocket ack or HTTP 200) before SIGKILL is in PostgreSQL, once", async () => {
    const d = await launch();
    const ws = await Promise.all([wsProducer(d, "kill-wsa", 50, 5000), wsProducer(d, "kill-wsb", 50, 5000)]);
    const http = [httpProducer(d, "kill-http1", 50, 5000), httpProducer(d, "kill-http2", 50, 5000)];
    const httpAcks = () => http.reduce((n, p) => n + p.statuses.filter((s) => s === 200).length, 0);
    await waitFor("acks under load", () => ws.every((p) => p.ackedFrames >= 20) && httpAcks() >= 10, 30_000, 20);

    // Kill while frames and requests are still in flight, mid group commit.
    const killed = await d.kill("SIGKILL");
    assert.equal(killed.signal, "SIGKILL");
    for (const p of http) p.stop();
    for (const p of ws) p.stop();
    await Promise.all(http.map((p) => p.done));
    await Promise.all(ws.map((p) => p.client.closed));

    for (const p of ws) assert.equal(p.protocolError, null);
    const acked = [...ws.flatMap((p) => p.ackedIds), ...http.flatMap((p) => p.ackedIds)];
    assert.ok(acked.length >= 2 * 20 * 50 + 10 * 50);
    const { present, doubled } = await stored(acked);
    assert.equal(present, acked.length, `${acked.length - present} acknowledged events missing after kill -9`);
    assert.deepEqual(doubled, []);
    // Something really was in flight: frames sent but not acknowledged when the daemon died.
    assert.ok(
      ws.some((p) => p.sentFrames > p.ackedFrames),
      "the kill hit while frames were unacknowledged",
    );
  });

  test("a new daemon on the same database starts and serves after the kill", async () => {
    const d = await launch();
    const res = await post(`${d.base}/v1/streams/events/events`, JSON.stringify(event("kill-after-1")));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(await idsWithPrefix("kill-after-"), ["kill-after-1"]);
    const { code } = await d.stop();
    assert.equal(code, 0);
  });
});

describe("SIGTERM under load", () => {
  test("in-flight requests are answered, WebSockets get their acks then 1001, exit 0", async () => {
    // A long group-commit age keeps the requests in flight (waiting for their commit) when SIGTERM comes.
    const d = await launch({ BATCH_TIMEOUT_MS: "2500" });
    const ws = await Promise.all([wsProducer(d, "term-wsa", 20, 5000), wsProducer(d, "term-wsb", 20, 5000)]);
    await waitFor("first acks", () => ws.every((p) => p.ackedFrames >= 2), 15_000, 20);
    // Let the open group commits drain so the requests below start fresh ones, committed 2.5 s later.
    for (const p of ws) p.stop();
    await waitFor("WebSocket frames all acked", () => ws.every((p) => p.ackedFrames === p.sentFrames), 15_000, 20);

    const inFlight = Array.from({ length: 10 }, (_, r) => {
      const ids = frameIds("term-http", r, 30);
      return { ids, res: post(`${d.base}/v1/streams/events/events`, JSON.stringify(ids.map((id) => event(id)))) };
    });
    let answeredBeforeTerm = 0;
    for (const r of inFlight)
      void r.res.then(
        () => answeredBeforeTerm++,
        () => undefined,
      );
    for (const p of ws) p.resume();
    // Give the requests time to reach the daemon (generous on a busy machine); their commit is still about
    // 2.5 s away.
    await new Promise((r) => setTimeout(r, 800));
    const answeredAtTerm = answeredBeforeTerm;

    const t0 = Date.now();
    const exit = await d.stop();
    const stopMs = Date.now() - t0;
    assert.equal(exit.code, 0, `exit ${exit.code ?? exit.signal}\n${d.output.slice(-20).join("\n")}`);
    assert.ok(stopMs < 20_000, `stopped within the stop timeout (${stopMs} ms)`);

    const answers = await Promise.all(inFlight.map((r) => r.res));
    assert.deepEqual(
      answers.map((a) => a.status),
      inFlight.map(() => 200),
      answers.map((a) => a.text).join("\n"),
    );
    assert.ok(answeredAtTerm < inFlight.length, "some requests were still in flight at SIGTERM");
    const httpIds = inFlight.flatMap((r) => r.ids);
    assert.equal((await stored(httpIds)).present, httpIds.length);

    for (const p of ws) {
      const closed = await p.client.closed;
      assert.equal(closed.code, 1001);
      assert.equal(p.protocolError, null);
      assert.ok(p.ackedFrames >= 2);
    }
    // Acked is exactly what was committed: nothing acked is missing, nothing stored went unacknowledged.
    for (const [p, prefix] of [
      [ws[0], "term-wsa-"],
      [ws[1], "term-wsb-"],
    ] as const) {
      assert.deepEqual(await idsWithPrefix(prefix), [...p.ackedIds].sort());
    }
  });
});

describe("PostgreSQL outage under a WebSocket producer", () => {
  test("acks wait during a short outage and arrive after recovery; the rows are stored once", async () => {
    const own = await fx.startDb();
    // A deadline well beyond the outage, so the frame waits rather than closes even on a slow machine.
    const d = await launch({ OVERLOAD_DEADLINE_MS: "20000" }, own);
    const c = await openWs(`${d.wsBase}/v1/ws?stream=events`);
    clients.push(c);
    c.send(JSON.stringify([event("pg-1a"), event("pg-1b")]));
    await c.waitForAcks(1);

    await own.server.stop();
    c.send(JSON.stringify([event("pg-2a"), event("pg-2b")]));
    // No ack while nothing can be committed: acks are delayed, never faked.
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(c.acks.length, 1);
    await own.server.restart();

    const acks = await c.waitForAcks(2, 15_000);
    assert.equal(acks[1].seq, 2);
    assert.equal(acks[1].accepted, 2);
    const ids = await waitFor("rows after recovery", () => idsWithPrefix("pg-", own).catch(() => null), 5000, 100);
    assert.deepEqual(ids, ["pg-1a", "pg-1b", "pg-2a", "pg-2b"]);
    const { doubled } = await stored(ids, own);
    assert.deepEqual(doubled, []);
    c.socket.close();
  });

  test("an outage longer than the deadline closes with 1013 and the unacknowledged frame is not stored", async () => {
    const own = await fx.startDb();
    const d = await launch({ OVERLOAD_DEADLINE_MS: "1500" }, own);
    const c = await openWs(`${d.wsBase}/v1/ws?stream=events`);
    clients.push(c);
    await own.server.stop();
    c.send(JSON.stringify(event("late-1")));
    let timer: NodeJS.Timeout | undefined;
    const closed = await Promise.race([c.closed, new Promise<null>((r) => (timer = setTimeout(() => r(null), 15_000)))]);
    clearTimeout(timer);
    assert.ok(closed, "closed within 15 s");
    assert.equal(
      closed.code,
      1013,
      `close ${closed.code} "${closed.reason}", daemon exit ${d.child.exitCode}:\n${d.output.slice(-15).join("\n")}`,
    );
    assert.deepEqual(c.acks, []);
    await own.server.restart();
    await waitFor("health back", async () => (await get(`${d.base}/health`)).status === 200, 15_000, 200);
    const ids = await waitFor("a working query", () => idsWithPrefix("late-", own).catch(() => null), 5000, 100);
    assert.deepEqual(ids, []);
  });
});

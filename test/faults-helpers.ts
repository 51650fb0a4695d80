/**
 * Shared pieces of the fault tests (test/faults-*.test.ts): a seeded PRNG, freezing PostgreSQL with
 * SIGSTOP, the daemon's resident memory, metrics, resilient load producers that remember exactly which
 * event ids were acknowledged, and the check that every acknowledged id is stored exactly once.
 *
 * Everything talks to 127.0.0.1 only, and every producer is bounded (it stops when told, or after a
 * number of units).
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import WebSocket from "ws";
import { useTestDb, type TestDbFixture } from "./fixture";
import { event, type TestDb } from "./harness";

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------
// Seeded randomness: failures reproduce with FAULTS_SEED=<the seed printed by the test>.

/** mulberry32: a small, fast, seedable PRNG returning floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed from FAULTS_SEED, else a fresh one; always printed so a failing run can be replayed. */
export function testSeed(what: string): number {
  const fromEnv = process.env.FAULTS_SEED;
  const seed = fromEnv ? Number(fromEnv) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  console.log(`[faults] ${what}: seed ${seed} (replay with FAULTS_SEED=${seed})`);
  return seed;
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL frozen with SIGSTOP: connections stay open, nothing answers, commits hang. The realest
// "the database falls behind" there is.

const frozen = new Set<number>();

function childPids(pid: number): number[] {
  try {
    return execFileSync("pgrep", ["-P", String(pid)], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    return []; // pgrep exits 1 when there are none
  }
}

/** SIGSTOPs the postmaster (first, so it forks nothing new) and every backend and helper under it. */
export function freezePostgres(db: TestDb): number[] {
  const postmaster = db.server.pid();
  if (!postmaster) throw new Error("no PostgreSQL pid");
  process.kill(postmaster, "SIGSTOP");
  frozen.add(postmaster);
  const pids = [postmaster];
  for (const pid of childPids(postmaster)) {
    try {
      process.kill(pid, "SIGSTOP");
      frozen.add(pid);
      pids.push(pid);
    } catch {
      // exited in between
    }
  }
  return pids;
}

/** SIGCONTs everything frozen (backends first, then the postmaster). Safe to call when nothing is. */
export function thawPostgres(): void {
  const pids = [...frozen].reverse();
  frozen.clear();
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGCONT");
    } catch {
      // gone
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The daemon's memory and metrics.

/** Resident set size of a process in bytes (VmRSS from /proc/<pid>/status), 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export interface RssSampler {
  readonly peak: number;
  readonly last: number;
  stop(): number;
}

/** Samples a process's RSS every `intervalMs`; `peak` is the highest seen. */
export function sampleRss(pid: number, intervalMs = 100): RssSampler {
  let peak = rssBytes(pid);
  let last = peak;
  const timer = setInterval(() => {
    last = rssBytes(pid);
    if (last > peak) peak = last;
  }, intervalMs);
  return {
    get peak() {
      return peak;
    },
    get last() {
      return last;
    },
    stop() {
      clearInterval(timer);
      last = rssBytes(pid);
      if (last > peak) peak = last;
      return peak;
    },
  };
}

export const MiB = 1024 * 1024;
export const mib = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;

/** One unlabelled sample from GET /metrics (NaN if absent). */
export async function metric(base: string, name: string): Promise<number> {
  const res = await fetch(`${base}/metrics`);
  const text = await res.text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+|NaN)$`, "m").exec(text);
  return m ? Number(m[1]) : NaN;
}

/** The sum of every sample of a metric (all label sets) from GET /metrics. */
export async function metricSum(base: string, name: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, "gm"))) sum += Number(m[1]);
  return sum;
}

/** GET /health with a timeout (a frozen database makes the probe take up to its own 2 s timeout). */
export async function health(base: string, timeoutMs = 5000): Promise<{ status: number; json: any }> {
  const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = { text };
  }
  return { status: res.status, json };
}

// ---------------------------------------------------------------------------------------------------------
// Checking what PostgreSQL holds against what was acknowledged.

export interface StoredCheck {
  /** Distinct acknowledged ids checked. */
  checked: number;
  /** Acknowledged ids not in the table. */
  missing: number;
  missingSample: string[];
  /** Acknowledged ids stored more than once. */
  doubled: number;
  doubledSample: string[];
}

/**
 * Loads `ids` into a temporary table over COPY and anti-joins it with `table`: every acknowledged id must
 * be there, and (deduplicating streams) exactly once.
 */
export async function checkStored(url: string, ids: Iterable<string>, table = "events", column = "event_id"): Promise<StoredCheck> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query("CREATE TEMP TABLE acked (id text)");
    const stream = client.query(copyFrom("COPY acked (id) FROM STDIN"));
    const done = new Promise<void>((resolve, reject) => {
      stream.on("finish", resolve);
      stream.on("error", reject);
    });
    let chunk = "";
    for (const id of ids) {
      chunk += `${id}\n`; // ids made by the tests carry no tab, newline or backslash
      if (chunk.length > 1 << 20) {
        if (!stream.write(chunk)) await new Promise((r) => stream.once("drain", r));
        chunk = "";
      }
    }
    stream.end(chunk);
    await done;
    await client.query("CREATE TEMP TABLE acked_ids AS SELECT DISTINCT id FROM acked");
    await client.query("ANALYZE acked_ids");
    const checked = (await client.query("SELECT count(*)::int AS n FROM acked_ids")).rows[0].n as number;
    const missing = await client.query(`SELECT a.id FROM acked_ids a WHERE NOT EXISTS (SELECT 1 FROM ${table} e WHERE e.${column} = a.id)`);
    const doubled = await client.query(
      `SELECT e.${column} AS id FROM ${table} e JOIN acked_ids a ON a.id = e.${column} GROUP BY e.${column} HAVING count(*) > 1`,
    );
    return {
      checked,
      missing: missing.rows.length,
      missingSample: missing.rows.slice(0, 5).map((r) => r.id),
      doubled: doubled.rows.length,
      doubledSample: doubled.rows.slice(0, 5).map((r) => r.id),
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Ids with `prefix` stored more than once, whether acknowledged or not (deduplicating streams). */
export async function doubledWithPrefix(db: TestDb, prefix: string): Promise<string[]> {
  const res = await db.query("SELECT event_id FROM events WHERE event_id LIKE $1 || '%' GROUP BY event_id HAVING count(*) > 1 LIMIT 10", [
    prefix,
  ]);
  return res.rows.map((r) => r.event_id);
}

export async function countWithPrefix(db: TestDb, prefix: string): Promise<number> {
  const res = await db.query("SELECT count(*)::int AS n FROM events WHERE event_id LIKE $1 || '%'", [prefix]);
  return res.rows[0].n;
}

// ---------------------------------------------------------------------------------------------------------
// Load producers. A unit is one WebSocket frame or one HTTP request: a batch of events with ids
// `${prefix}-${unit}-${i}`. Producers remember exactly which ids were acknowledged; with `resend` they send
// units refused with 503 / 1013 (or cut by a dropped connection) again, with the same ids, as an SDK would.

export interface Unit {
  n: number;
  ids: string[];
  body: string;
}

export interface UnitOptions {
  prefix: string;
  /** Events per frame / request. */
  perUnit: number;
  /** Extra payload bytes per event (bigger bodies with the same event count). */
  padBytes?: number;
  /** The record for an id (default: a valid `events` record). */
  record?: (id: string) => unknown;
}

export function unitMaker(options: UnitOptions): () => Unit {
  let n = 0;
  const pad = options.padBytes ? "p".repeat(options.padBytes) : undefined;
  return () => {
    const u = ++n;
    const ids = Array.from({ length: options.perUnit }, (_, i) => `${options.prefix}-${u}-${i}`);
    const records = ids.map((id) =>
      options.record ? options.record(id) : event(id, pad === undefined ? {} : { payload: { n: id, pad } }),
    );
    return { n: u, ids, body: JSON.stringify(records) };
  };
}

export interface ProducerStats {
  name: string;
  /** Ids of every acknowledged unit (WebSocket ack / HTTP 200). */
  ackedIds: string[];
  ackedUnits: number;
  ackedEvents: number;
  /** Of the acknowledged events: stored by this ack / already stored (a resend of something stored). */
  accepted: number;
  duplicates: number;
  sentUnits: number;
  /** Units sent again after a refusal or a lost connection. */
  resentUnits: number;
  /** HTTP statuses, WebSocket close codes ("close 1013"), transport errors ("error ECONNRESET"). */
  outcomes: Record<string, number>;
  /** 503 answers without a Retry-After header. */
  retryAfterMissing: number;
  /** Anything the protocol does not allow: out-of-order acks, counts that do not match, odd statuses. */
  protocolErrors: string[];
}

function newStats(name: string): ProducerStats {
  return {
    name,
    ackedIds: [],
    ackedUnits: 0,
    ackedEvents: 0,
    accepted: 0,
    duplicates: 0,
    sentUnits: 0,
    resentUnits: 0,
    outcomes: {},
    retryAfterMissing: 0,
    protocolErrors: [],
  };
}

function bump(stats: ProducerStats, key: string): void {
  stats.outcomes[key] = (stats.outcomes[key] ?? 0) + 1;
}

export interface Producer {
  readonly stats: ProducerStats;
  /** Ids of units sent at least once and never acknowledged. */
  unackedIds(): string[];
  /**
   * Stops making new units. With `drain` (and `resend`), keeps going until every unit made so far is
   * acknowledged or `timeoutMs` passes; otherwise stops at once. Resolves when the producer is idle.
   */
  stop(options?: { drain?: boolean; timeoutMs?: number }): Promise<void>;
  /** Resolves when the producer has nothing left to do (stopped, or its daemon is gone without resend). */
  readonly done: Promise<void>;
}

export interface ProducerOptions extends UnitOptions {
  /** Stop making units after this many (unbounded until stop() otherwise). */
  maxUnits?: number;
  /** Send refused or lost units again with the same ids; without it, a lost connection ends the producer. */
  resend: boolean;
  /** Pause before reconnecting a WebSocket / retrying a request after a transport error. */
  retryDelayMs?: number;
  /** WebSocket stream (default events). */
  stream?: string;
}

/** A WebSocket producer keeping its window full. */
export function wsProducer(wsBase: string, options: ProducerOptions): Producer {
  const stats = newStats(`ws ${options.prefix}`);
  const make = unitMaker(options);
  const queue: Unit[] = []; // made, to (re)send
  let inflight: Unit[] = []; // sent on the current connection, unacknowledged, in seq order
  let made = 0;
  let generating = true;
  let finished = false;
  let socket: WebSocket | null = null;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const retryDelay = options.retryDelayMs ?? 300;
  const url = `${wsBase}/v1/ws?stream=${options.stream ?? "events"}`;

  const finish = () => {
    if (finished) return;
    finished = true;
    generating = false;
    socket?.terminate();
    resolveDone();
  };
  const hasWork = () =>
    queue.length > 0 || inflight.length > 0 || (generating && (options.maxUnits === undefined || made < options.maxUnits));

  const connect = () => {
    if (finished) return;
    const ws = new WebSocket(url, { perMessageDeflate: false });
    socket = ws;
    let window = 0;
    let seq = 0;
    const pump = () => {
      while (!finished && socket === ws && ws.readyState === WebSocket.OPEN && inflight.length < window) {
        let unit = queue.shift();
        if (unit === undefined) {
          if (!generating || (options.maxUnits !== undefined && made >= options.maxUnits)) break;
          unit = make();
          made++;
        } else if ((unit as Unit & { sent?: boolean }).sent) {
          stats.resentUnits++;
        }
        (unit as Unit & { sent?: boolean }).sent = true;
        ws.send(unit.body);
        stats.sentUnits++;
        inflight.push(unit);
      }
      if (!generating && !hasWork() && socket === ws) {
        ws.close(1000);
      }
    };
    ws.on("message", (data) => {
      let msg: any;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        stats.protocolErrors.push(`not JSON: ${data.toString().slice(0, 100)}`);
        return;
      }
      if (msg.type === "hello") {
        window = msg.window;
        pump();
        return;
      }
      if (msg.type !== "ack") {
        stats.protocolErrors.push(`unexpected message ${JSON.stringify(msg).slice(0, 200)}`);
        return;
      }
      seq++;
      const unit = inflight.shift();
      if (msg.seq !== seq) stats.protocolErrors.push(`ack seq ${msg.seq}, expected ${seq}`);
      if (!unit) {
        stats.protocolErrors.push(`ack ${msg.seq} for nothing in flight`);
        return;
      }
      if (msg.rejected !== 0 || msg.accepted + msg.duplicates !== unit.ids.length) {
        stats.protocolErrors.push(`ack ${msg.seq}: ${JSON.stringify(msg).slice(0, 300)}`);
        return;
      }
      stats.ackedUnits++;
      stats.ackedEvents += unit.ids.length;
      stats.accepted += msg.accepted;
      stats.duplicates += msg.duplicates;
      for (const id of unit.ids) stats.ackedIds.push(id);
      pump();
    });
    ws.on("error", () => undefined); // 'close' follows
    ws.on("close", (code) => {
      if (socket !== ws) return;
      socket = null;
      bump(stats, `close ${code}`);
      // Unacknowledged frames were not acknowledged: resend them, in order, ahead of new ones.
      queue.unshift(...inflight);
      inflight = [];
      if (options.resend && hasWork() && !finished) setTimeout(connect, retryDelay);
      else finish();
    });
  };
  connect();

  return {
    stats,
    done,
    unackedIds: () => [...inflight, ...queue].flatMap((u) => ((u as Unit & { sent?: boolean }).sent ? u.ids : [])),
    async stop({ drain = false, timeoutMs = 30_000 } = {}) {
      generating = false;
      if (!drain) {
        finish();
        return done;
      }
      // Once everything is acknowledged the socket is closed normally (1000) and its close handler finishes.
      const closeWhenIdle = () => {
        if (hasWork()) return;
        if (socket?.readyState === WebSocket.OPEN) socket.close(1000);
        else if (socket === null || socket.readyState !== WebSocket.CLOSING) finish();
      };
      closeWhenIdle();
      const timer = setTimeout(finish, timeoutMs);
      const poll = setInterval(closeWhenIdle, 50);
      await done;
      clearTimeout(timer);
      clearInterval(poll);
    },
  };
}

/** An HTTP producer posting one request at a time, as fast as answers come. */
export function httpProducer(base: string, options: ProducerOptions & { path?: string }): Producer {
  const stats = newStats(`http ${options.prefix}`);
  const make = unitMaker(options);
  const url = `${base}${options.path ?? "/v1/streams/events/events"}`;
  const queue: Unit[] = [];
  /** Refused or lost units a producer without `resend` gave up on. */
  const abandoned: Unit[] = [];
  let current: Unit | null = null;
  let made = 0;
  let generating = true;
  let stopped = false;
  let controller: AbortController | null = null;
  const retryDelay = options.retryDelayMs ?? 300;

  const done = (async () => {
    while (!stopped) {
      let unit = queue.shift();
      if (unit === undefined) {
        if (!generating || (options.maxUnits !== undefined && made >= options.maxUnits)) break;
        unit = make();
        made++;
      } else {
        stats.resentUnits++;
      }
      current = unit;
      stats.sentUnits++;
      controller = new AbortController();
      let status: number;
      let text: string;
      let retryAfter: string | null;
      try {
        const res = await fetch(url, {
          method: "POST",
          body: unit.body,
          headers: { "content-type": "application/json" },
          signal: controller.signal,
        });
        status = res.status;
        retryAfter = res.headers.get("retry-after");
        text = await res.text();
      } catch (err) {
        const cause = (err as { cause?: { code?: string } }).cause;
        bump(stats, `error ${cause?.code ?? (err as Error).name}`);
        if (stopped) break;
        if (!options.resend) {
          abandoned.push(unit);
          current = null;
          break; // the daemon is gone
        }
        queue.unshift(unit);
        await sleep(retryDelay);
        continue;
      }
      bump(stats, String(status));
      if (status === 200) {
        let json: any;
        try {
          json = JSON.parse(text);
        } catch {
          json = {};
        }
        if (json.accepted + json.duplicates !== unit.ids.length || json.rejected !== 0) {
          stats.protocolErrors.push(`200 with ${text.slice(0, 300)}`);
        }
        stats.ackedUnits++;
        stats.ackedEvents += unit.ids.length;
        stats.accepted += json.accepted ?? 0;
        stats.duplicates += json.duplicates ?? 0;
        for (const id of unit.ids) stats.ackedIds.push(id);
        current = null;
      } else if (status === 503) {
        if (retryAfter === null) stats.retryAfterMissing++;
        current = null;
        // Nothing of it was acknowledged: it may be resent.
        if (!options.resend) {
          abandoned.push(unit);
          continue;
        }
        queue.unshift(unit);
        await sleep(Math.min(1000, Number(retryAfter ?? 1) * 1000));
      } else {
        stats.protocolErrors.push(`status ${status}: ${text.slice(0, 300)}`);
        current = null;
      }
    }
    current = null;
  })();

  return {
    stats,
    done,
    unackedIds: () => [...abandoned, ...queue, ...(current ? [current] : [])].flatMap((u) => u.ids),
    async stop({ drain = false, timeoutMs = 30_000 } = {}) {
      generating = false;
      if (!drain) {
        stopped = true;
        controller?.abort();
        await done.catch(() => undefined);
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([done, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
      clearTimeout(timer);
      stopped = true;
      controller?.abort();
      await done.catch(() => undefined);
    },
  };
}

/** Sums stats over producers. */
export function total(producers: Producer[]): ProducerStats {
  const t = newStats("total");
  for (const p of producers) {
    const s = p.stats;
    t.ackedUnits += s.ackedUnits;
    t.ackedEvents += s.ackedEvents;
    t.accepted += s.accepted;
    t.duplicates += s.duplicates;
    t.sentUnits += s.sentUnits;
    t.resentUnits += s.resentUnits;
    t.retryAfterMissing += s.retryAfterMissing;
    for (const [k, v] of Object.entries(s.outcomes)) t.outcomes[k] = (t.outcomes[k] ?? 0) + v;
    for (const e of s.protocolErrors) if (t.protocolErrors.length < 20) t.protocolErrors.push(`${s.name}: ${e}`);
  }
  return t;
}

export function* allAckedIds(producers: Producer[]): Generator<string> {
  for (const p of producers) yield* p.stats.ackedIds;
}

/** Waits until `probe` is true, polling; throws naming `what` after `timeoutMs`. */
export async function until(
  what: string,
  probe: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 50,
  state?: () => string,
): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - start;
    if (Date.now() - start > timeoutMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state ? ` (${state()})` : ""}`);
    await sleep(intervalMs);
  }
}

export interface FaultFixture extends TestDbFixture {
  /** Every producer a test starts goes here, so that a failed test leaves none running. */
  readonly producers: Producer[];
}

/**
 * What every fault suite shares: the common fixture's database for the file (fx.db; tests start their
 * daemons with fx.startDaemon) and, on the way out (after a failed test too), PostgreSQL thawed, producers
 * stopped, then the fixture's teardown: what tests registered with fx.teardown, daemons killed (SIGKILL),
 * the cluster closed.
 */
export function faultFixture(): FaultFixture {
  const fx = useTestDb({ stopSignal: "SIGKILL" });
  const producers: Producer[] = [];
  fx.teardown(async () => {
    thawPostgres();
    await Promise.all(producers.map((p) => p.stop().catch(() => undefined)));
  });
  return Object.assign(fx, { producers });
}

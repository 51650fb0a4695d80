/**
 * Real parts for tests: an embedded PostgreSQL the test starts itself, and the real daemon as a child
 * process (`node dist/src/cli.js serve`) pointed at it. Nothing here mocks the database or the server.
 */
import { createInterface } from "node:readline";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import WebSocket from "ws";
import { startEmbeddedDb, type EmbeddedDb } from "../src/storage/embedded-db";

export const ROOT = path.resolve(__dirname, "../..");
export const CLI = path.join(ROOT, "dist/src/cli.js");

export interface TestDb {
  server: EmbeddedDb;
  /** URL of a fresh database of its own, created for this test file. */
  url: string;
  query<T extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<T>>;
  close(): Promise<void>;
}

let dbCounter = 0;

/** Starts a throwaway PostgreSQL cluster and creates one database in it. */
export async function startTestDb(): Promise<TestDb> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-test-pg-"));
  const server = await startEmbeddedDb({ dir });
  const name = `ingestd_test_${process.pid}_${++dbCounter}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = server.url.replace(/\/postgres$/, `/${name}`);
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on("error", () => undefined);
  return {
    server,
    url,
    query: (sql, params) => pool.query(sql, params as any[]),
    async close() {
      await pool.end().catch(() => undefined);
      await server.remove().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Daemon {
  child: ChildProcess;
  port: number;
  base: string;
  wsBase: string;
  /** Every stdout/stderr line so far (JSON log lines). */
  output: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface DaemonOptions {
  /** "" runs the daemon's own embedded PostgreSQL under its DATA_DIR. */
  databaseUrl: string;
  /** The checkout to run from (its dist/src/cli.js, in its directory); default this one. */
  root?: string;
  env?: Record<string, string>;
  args?: string[];
  /** How long to wait for the listening line. */
  startTimeoutMs?: number;
}

/** Starts the real daemon on a free port and resolves once it logs that it is listening. */
export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const root = options.root ?? ROOT;
  const child = spawn(process.execPath, [path.join(root, "dist/src/cli.js"), ...(options.args ?? ["serve"])], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      HOST: "127.0.0.1",
      PORT: "0",
      LOG_LEVEL: "info",
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start:\n${output.join("\n")}`)), options.startTimeoutMs ?? 30_000);
    const onLine = (line: string) => {
      output.push(line);
      if (process.env.INGESTD_TEST_VERBOSE) process.stderr.write(`[daemon] ${line}\n`);
      try {
        const entry = JSON.parse(line);
        if (typeof entry.msg === "string" && entry.msg.startsWith("ingestd listening") && entry.port) {
          clearTimeout(timer);
          resolve(entry.port);
        }
      } catch {
        // not a JSON log line
      }
    };
    for (const input of [child.stdout!, child.stderr!]) createInterface({ input, crlfDelay: Infinity }).on("line", onLine);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${code ?? signal}) before listening:\n${output.join("\n")}`));
    });
  });
  return {
    child,
    port,
    base: `http://127.0.0.1:${port}`,
    wsBase: `ws://127.0.0.1:${port}`,
    output,
    exited,
    stop() {
      child.kill("SIGTERM");
      return exited;
    },
    kill(signal: NodeJS.Signals = "SIGKILL") {
      child.kill(signal);
      return exited;
    },
  };
}

/** POSTs a body and returns status, headers and parsed JSON (or text). */
export async function post(
  url: string,
  body: string | Uint8Array,
  contentType = "application/json",
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  const res = await fetch(url, { method: "POST", body, headers: { "content-type": contentType, ...headers } });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, json, text };
}

/** A valid `events` record. */
export function event(id: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { event_id: id, service_name: "checkout", event_type: "click", payload: { n: id }, ...extra };
}

// ---------------------------------------------------------------------------------------------------------
// Helpers for the behaviour tests (HTTP edge cases, WebSocket protocol, polling).

/** Polls `probe` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function waitFor<T>(what: string, probe: () => Promise<T> | T, timeoutMs = 10_000, intervalMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value as NonNullable<T>;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** GETs a URL and returns status, headers and parsed JSON (or text). */
export async function get(url: string, method = "GET"): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  const res = await fetch(url, { method });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, json, text };
}

export interface RawResponse {
  /** 0 when no status line arrived. */
  status: number;
  head: string;
  body: string;
  /** Socket error seen (EPIPE/ECONNRESET after an early answer), if any. */
  error?: string;
}

/**
 * Sends bytes over a plain TCP socket and collects one answer (until its Content-Length is complete, the
 * server closes, or `timeoutMs`). For small requests fetch cannot make: no Content-Length, chunked bodies,
 * lying lengths. (Big bodies answered early go through fetch: a raw socket that keeps writing after the
 * server closed gets EPIPE and Node drops the answer.)
 */
export function rawRequest(port: number, head: string, body: Uint8Array | string = "", timeoutMs = 5000): Promise<RawResponse> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString("utf8");
      const split = text.indexOf("\r\n\r\n");
      const headPart = split === -1 ? text : text.slice(0, split);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(headPart);
      resolve({ status: m ? Number(m[1]) : 0, head: headPart, body: split === -1 ? "" : text.slice(split + 4), error });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on("data", (c) => {
      chunks.push(c);
      // One answer is all these requests get: stop once its body (by Content-Length) is complete.
      const text = Buffer.concat(chunks).toString("latin1");
      const split = text.indexOf("\r\n\r\n");
      if (split !== -1) {
        const len = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, split));
        if (len && text.length - split - 4 >= Number(len[1])) finish();
      }
    });
    socket.on("error", (err) => {
      error = (err as NodeJS.ErrnoException).code ?? err.message;
    });
    socket.on("close", finish);
    socket.on("connect", () => {
      socket.write(head);
      if (body.length > 0) socket.write(body);
    });
  });
}

export interface WsClient {
  socket: WebSocket;
  /** The server's hello message. */
  hello: any;
  /** Every ack received so far, in arrival order. */
  acks: any[];
  /** Arrival time (ms, Date.now()) of each ack. */
  ackTimes: number[];
  /** Resolves with the close code and reason (1006 when the connection dropped without a close frame). */
  closed: Promise<{ code: number; reason: string }>;
  /** Resolves once `n` acks in total have arrived; rejects on close or after `timeoutMs`. */
  waitForAcks(n: number, timeoutMs?: number): Promise<any[]>;
  send(data: string | Buffer): void;
}

/**
 * Opens a WebSocket to the daemon and waits for its hello. Rejects with `status`, `headers` and `body` set
 * when the upgrade is refused with an HTTP answer. `options` are the `ws` client's (headers, TLS trust).
 */
export function openWs(url: string, timeoutMs = 5000, options: WebSocket.ClientOptions = {}): Promise<WsClient> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { perMessageDeflate: false, ...options });
    const acks: any[] = [];
    const ackTimes: number[] = [];
    const waiters: Array<{ n: number; resolve: (a: any[]) => void; reject: (e: Error) => void }> = [];
    let closeInfo: { code: number; reason: string } | null = null;
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`no hello from ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    const closed = new Promise<{ code: number; reason: string }>((resolveClosed) => {
      socket.on("close", (code, reason) => {
        closeInfo = { code, reason: reason.toString() };
        clearTimeout(timer);
        reject(new Error(`closed before hello: ${code} ${reason.toString()}`));
        for (const w of waiters.splice(0))
          w.reject(new Error(`closed (${code} ${reason.toString()}) after ${acks.length} acks, waiting for ${w.n}`));
        resolveClosed(closeInfo);
      });
    });
    socket.on("unexpected-response", (_req, res) => {
      clearTimeout(timer);
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      const fail = () =>
        reject(
          Object.assign(new Error(`upgrade refused: ${res.statusCode} ${text}`), {
            status: res.statusCode,
            headers: res.headers,
            body: text,
          }),
        );
      res.on("end", fail);
      res.on("error", fail);
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    let client: WsClient | null = null;
    socket.on("message", (data) => {
      const msg = JSON.parse(data.toString());
      if (client === null) {
        clearTimeout(timer);
        client = {
          socket,
          hello: msg,
          acks,
          ackTimes,
          closed,
          waitForAcks(n, waitMs = 10_000) {
            if (acks.length >= n) return Promise.resolve(acks);
            if (closeInfo) return Promise.reject(new Error(`closed (${closeInfo.code}) after ${acks.length} acks, waiting for ${n}`));
            return new Promise((res, rej) => {
              const w = { n, resolve: res, reject: rej };
              waiters.push(w);
              setTimeout(() => {
                const i = waiters.indexOf(w);
                if (i >= 0) {
                  waiters.splice(i, 1);
                  rej(new Error(`timed out after ${waitMs} ms with ${acks.length} acks, waiting for ${n}`));
                }
              }, waitMs).unref();
            });
          },
          send(data) {
            socket.send(data);
          },
        };
        resolve(client);
        return;
      }
      acks.push(msg);
      ackTimes.push(Date.now());
      for (const w of [...waiters]) {
        if (acks.length >= w.n) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(acks);
        }
      }
    });
  });
}

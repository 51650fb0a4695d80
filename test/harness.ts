/**
 * Real parts for tests: an embedded PostgreSQL the test starts itself, and the real daemon as a child
 * process (`node dist/src/cli.js serve`) pointed at it. Nothing here mocks the database or the server.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { startEmbeddedDb, type EmbeddedDb } from "../src/embedded-db";

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
      await server.stop().catch(() => undefined);
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
  databaseUrl: string;
  env?: Record<string, string>;
  args?: string[];
  /** How long to wait for the listening line. */
  startTimeoutMs?: number;
}

/** Starts the real daemon on a free port and resolves once it logs that it is listening. */
export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const child = spawn(process.execPath, [CLI, ...(options.args ?? ["serve"])], {
    cwd: ROOT,
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
    for (const stream of [child.stdout!, child.stderr!]) {
      let buffered = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        buffered += chunk;
        let nl: number;
        while ((nl = buffered.indexOf("\n")) !== -1) {
          onLine(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
        }
      });
    }
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
  let json: any = undefined;
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

/**
 * Helpers of the security tests: keys files, API keys, WebSocket clients with headers / TLS options.
 * (The shared harness's openWs takes no options; this one does, for Authorization headers and CAs.)
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { hashToken, mintToken } from "../src/api-keys";

export interface TestKey {
  id: string;
  token: string;
  streams: string[];
  rate?: number;
  burst?: number;
}

export function newKey(id: string, streams: string[], rate?: number, burst?: number): TestKey {
  return { id, token: mintToken(), streams, rate, burst };
}

export function keysFileJson(keys: TestKey[]): string {
  return JSON.stringify(
    {
      keys: keys.map((k) => ({
        id: k.id,
        hash: `sha256:${hashToken(k.token)}`,
        streams: k.streams,
        ...(k.rate !== undefined ? { rate: k.rate } : {}),
        ...(k.burst !== undefined ? { burst: k.burst } : {}),
      })),
    },
    null,
    2,
  );
}

/** INGESTD_API_KEYS form: `id:sha256hex:streams[:rate[:burst]]` entries joined by `;`. */
export function envKeys(keys: TestKey[]): string {
  return keys
    .map((k) => [k.id, hashToken(k.token), k.streams.join(","), k.rate ?? "", k.burst ?? ""].join(":").replace(/:+$/, ""))
    .join(";");
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Writes atomically (rename), as an operator's config management would: a reload never sees half a file. */
export function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

export interface SecWs {
  socket: WebSocket;
  hello: any;
  acks: any[];
  /** Arrival time (ms, Date.now()) of each ack. */
  ackTimes: number[];
  closed: Promise<{ code: number; reason: string }>;
  waitForAcks(n: number, timeoutMs?: number): Promise<any[]>;
}

/**
 * Opens a WebSocket and waits for the hello. A refused upgrade rejects with `status` (the HTTP status of
 * the refusal) and `headers`.
 */
export function connectWs(url: string, options: WebSocket.ClientOptions = {}, timeoutMs = 5000): Promise<SecWs> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { perMessageDeflate: false, ...options });
    const acks: any[] = [];
    const ackTimes: number[] = [];
    const waiters: Array<{ n: number; resolve: (a: any[]) => void; reject: (e: Error) => void }> = [];
    let closeInfo: { code: number; reason: string } | null = null;
    let client: SecWs | null = null;
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`no hello from ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    const closed = new Promise<{ code: number; reason: string }>((resolveClosed) => {
      socket.on("close", (code, reason) => {
        closeInfo = { code, reason: reason.toString() };
        clearTimeout(timer);
        if (client === null) reject(new Error(`closed before hello: ${code}`));
        for (const w of waiters.splice(0)) w.reject(new Error(`closed (${code}) after ${acks.length} acks, waiting for ${w.n}`));
        resolveClosed(closeInfo);
      });
    });
    socket.on("unexpected-response", (_req, res) => {
      clearTimeout(timer);
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      const fail = () => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode} ${text}`), { status: res.statusCode, headers: res.headers, body: text }));
      res.on("end", fail);
      res.on("error", fail);
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
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

/** Parsed JSON log lines of a daemon's output. */
export function logEntries(output: string[]): any[] {
  const entries: any[] = [];
  for (const line of output) {
    try {
      entries.push(JSON.parse(line));
    } catch {
      // not a JSON line
    }
  }
  return entries;
}

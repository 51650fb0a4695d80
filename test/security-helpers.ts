/**
 * Helpers of the security tests: keys files, API keys, WebSocket clients with headers / TLS options.
 * (The shared harness's openWs takes no options; this one does, for Authorization headers and CAs.)
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type WebSocket from "ws";
import { hashToken, mintToken } from "../src/security/api-keys";
import { openWs, type WsClient } from "./harness";

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

/** The harness's WebSocket client; the security tests pass headers and TLS trust through its options. */
export type SecWs = WsClient;

/**
 * Opens a WebSocket and waits for the hello. A refused upgrade rejects with `status` (the HTTP status of
 * the refusal) and `headers`.
 */
export function connectWs(url: string, options: WebSocket.ClientOptions = {}, timeoutMs = 5000): Promise<SecWs> {
  return openWs(url, timeoutMs, options);
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

/**
 * Helpers shared by the ops-*.test.ts files: external tools that must be present, bounded traffic to a
 * daemon on 127.0.0.1, and reading its endpoints.
 */
import { spawnSync } from "node:child_process";
import type { TestContext } from "node:test";
import { parsePrometheusText, type Sample } from "../src/commands/top";
import { ENV_OVERRIDES } from "../src/ops/config";
import { event, post } from "./harness";

/**
 * Resolves a command on PATH. Missing: under CI (CI set) the test fails, since a test that cannot run must
 * not pass; on a developer machine it is skipped with the reason and the install command.
 */
export function requireTool(t: TestContext, command: string, install: string): string | null {
  const found = spawnSync("sh", ["-c", `command -v ${command}`], { encoding: "utf8" });
  if (found.status === 0) return found.stdout.trim();
  const reason = `${command} not found (install: ${install})`;
  if (process.env.CI) throw new Error(`${reason}; CI is set, so this is a failure, not a skip`);
  t.skip(reason);
  return null;
}

/** POSTs `requests` JSON arrays of `perRequest` valid events, `concurrency` at a time. */
export async function sendEvents(base: string, prefix: string, requests: number, perRequest = 10, concurrency = 4): Promise<number> {
  let next = 0;
  let accepted = 0;
  const worker = async () => {
    while (next < requests) {
      const i = next++;
      const body = JSON.stringify(Array.from({ length: perRequest }, (_, j) => event(`${prefix}-${i}-${j}`)));
      const res = await post(`${base}/v1/streams/events/events`, body);
      if (res.status !== 200) throw new Error(`ingest answered ${res.status}: ${res.text}`);
      accepted += res.json.accepted;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return accepted;
}

/** Keeps posting until `stop()` or `maxMs`, whichever comes first (a bounded loop by construction). */
export function backgroundTraffic(base: string, prefix: string, maxMs: number): { stop(): Promise<number> } {
  const deadline = Date.now() + maxMs;
  let stopped = false;
  let sent = 0;
  const loop = (async () => {
    let i = 0;
    while (!stopped && Date.now() < deadline) {
      sent += await sendEvents(base, `${prefix}-${i++}`, 4, 25, 4);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return sent;
    },
  };
}

export async function getJson(url: string): Promise<any> {
  const res = await fetch(url);
  return res.json();
}

export async function getMetrics(base: string): Promise<{ text: string; samples: Sample[] }> {
  const res = await fetch(`${base}/metrics`);
  const text = await res.text();
  return { text, samples: parsePrometheusText(text) };
}

/** Value of one series (exact label match on the labels given), 0 when absent. */
export function metric(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

/** Environment variables that override the configuration or pick its file. */
const CONFIG_ENV = new Set(["INGESTD_CONFIG", ...ENV_OVERRIDES.map(([env]) => env)]);

/** This process's environment without configuration overrides, plus `env`: a CLI run sees only what a test sets. */
export function configEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !CONFIG_ENV.has(k)));
  return { ...clean, ...env };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

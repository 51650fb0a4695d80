/**
 * One HTTP request of a source, with its timeout and retries (docs/sources.md#retries): a network error, a
 * timeout, 429 or 5xx is tried again after an exponential backoff with full jitter, or after the answer's
 * `Retry-After` when it says longer; any other 4xx, and an answer that is not JSON after the last attempt,
 * fail the run. undici does the HTTP.
 */
import { request } from "undici";

export interface HttpAttempts {
  timeoutMs: number;
  retries: number;
  backoffMs: number;
  maxBackoffMs: number;
  /** Aborted when the daemon stops: the wait and the request end at once. */
  signal: AbortSignal;
  /** Called per answer (its status) or failure ("error"), for metrics. */
  onStatus?: (status: string) => void;
}

export interface JsonAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export class SourceHttpError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    /** Milliseconds the server asked to wait (Retry-After), if it did. */
    readonly retryAfterMs: number | null = null,
  ) {
    super(message);
    this.name = "SourceHttpError";
  }
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date; null when absent or unreadable. */
export function retryAfterMs(header: string | string[] | undefined, nowMs = Date.now()): number | null {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - nowMs);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new SourceHttpError("stopped", false));
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new SourceHttpError("stopped", false));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

async function attempt(
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string },
  options: HttpAttempts,
): Promise<JsonAnswer> {
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = AbortSignal.any([timeout, options.signal]);
  let status: number;
  let headers: JsonAnswer["headers"];
  let text: string;
  try {
    const res = await request(url, {
      method: init.method as "GET" | "POST",
      headers: init.headers,
      body: init.body,
      signal,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      maxRedirections: 0,
    });
    status = res.statusCode;
    headers = res.headers;
    text = await res.body.text();
  } catch (err) {
    options.onStatus?.("error");
    if (options.signal.aborted) throw new SourceHttpError("stopped", false);
    const reason = timeout.aborted ? `no answer within ${options.timeoutMs} ms` : (err as Error).message;
    throw new SourceHttpError(`${init.method} ${redactQuery(url)}: ${reason}`, true);
  }
  options.onStatus?.(String(status));
  if (status === 429 || status >= 500) {
    throw new SourceHttpError(`${init.method} ${redactQuery(url)}: HTTP ${status}`, true, retryAfterMs(headers["retry-after"]));
  }
  if (status < 200 || status >= 300) throw new SourceHttpError(`${init.method} ${redactQuery(url)}: HTTP ${status}`, false);
  try {
    return { status, headers, body: JSON.parse(text) };
  } catch (err) {
    throw new SourceHttpError(`${init.method} ${redactQuery(url)}: the answer is not JSON (${(err as Error).message})`, true);
  }
}

/** The request, tried up to 1 + retries times. */
export async function requestJson(
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string },
  options: HttpAttempts,
): Promise<JsonAnswer> {
  for (let n = 0; ; n++) {
    try {
      return await attempt(url, init, options);
    } catch (err) {
      const e = err as SourceHttpError;
      if (!e.retryable || n >= options.retries) throw e;
      // Full jitter: a random wait up to the doubled backoff, so sources retrying at once spread out; never
      // shorter than what the server asked for.
      const ceiling = Math.min(options.maxBackoffMs, options.backoffMs * 2 ** n);
      const wait = Math.max(Math.random() * ceiling, e.retryAfterMs ?? 0);
      await sleep(wait, options.signal);
    }
  }
}

/** A URL for messages: query strings may carry tokens, so their values are left out. */
export function redactQuery(url: string): string {
  try {
    const u = new URL(url);
    for (const key of [...u.searchParams.keys()]) u.searchParams.set(key, "…");
    return u.toString();
  } catch {
    return "(url)";
  }
}

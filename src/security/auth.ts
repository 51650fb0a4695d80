/**
 * The gate every ingest route passes (HTTP and WebSocket): who is calling (401), may they write this
 * stream (403), are they within their rate (429). Reading records and dead letters back passes it too,
 * against the key's `read` list (permitRead). Operational endpoints (/health, /metrics, /stats,
 * /v1/latency, /openapi.json, batch status) do not pass it: they are scraped by monitoring that holds no
 * producer key, and expose no event data.
 */
import {
  API_KEYS_ENV,
  ApiKeysError,
  KeyStore,
  mayRead,
  mayWrite,
  presentedToken,
  streamCatalog,
  type ApiKey,
  type StreamCatalog,
} from "./api-keys";
import type { Logger } from "../ops/logger";
import { eventCost, retryAfterSeconds } from "./rate-limiter";

export interface Denial {
  status: 401 | 403 | 429;
  code: string;
  message: string;
  headers: Record<string, string>;
}

const CHALLENGE = { "WWW-Authenticate": 'Bearer realm="ingestd"' };

const MISSING: Denial = {
  status: 401,
  code: "unauthorized",
  message: "API key required: send Authorization: Bearer <key> or X-API-Key: <key>",
  headers: CHALLENGE,
};
const INVALID: Denial = { status: 401, code: "unauthorized", message: "invalid API key", headers: CHALLENGE };

export class Auth {
  readonly keys: KeyStore;
  private reloadListeners: Array<() => void> = [];

  constructor(file: string | null, envValue: string | undefined, catalog: StreamCatalog = streamCatalog()) {
    this.keys = new KeyStore(file, envValue, catalog);
  }

  get open(): boolean {
    return this.keys.open;
  }

  /**
   * The caller's key from the request headers (and `?token=` on WebSocket upgrades), or the 401 to send.
   * In open mode every caller gets OPEN_ACCESS.
   */
  authenticate(authorization: string, xApiKey: string, queryToken = ""): ApiKey | Denial {
    const token = presentedToken(authorization, xApiKey, queryToken);
    const key = this.keys.authenticate(token);
    if (key !== null) return key;
    return token === "" ? MISSING : INVALID;
  }

  /**
   * The 403 or 429 for this key writing this stream now, or null when it may go ahead. `rate` false skips
   * the 429: WebSocket producers are slowed by delayed acks instead of refused.
   */
  permit(key: ApiKey, stream: string, rate = true): Denial | null {
    if (!mayWrite(key, stream)) {
      // Names the key's id (not secret) so an operator can see which key to extend.
      return { status: 403, code: "forbidden", message: `API key ${key.id} may not write stream ${stream}`, headers: {} };
    }
    const wait = !rate || key.bucket === null ? 0 : key.bucket.waitMs();
    if (wait > 0) {
      const seconds = retryAfterSeconds(wait);
      return {
        status: 429,
        code: "rate_limited",
        message: `API key ${key.id} is over its rate of ${key.bucket!.rate} events/s; retry in ${seconds} s`,
        headers: { "Retry-After": String(seconds) },
      };
    }
    return null;
  }

  /** The 403 for this key reading back this stream's records or dead letters, or null when it may. */
  permitRead(key: ApiKey, stream: string): Denial | null {
    if (mayRead(key, stream)) return null;
    return { status: 403, code: "forbidden", message: `API key ${key.id} may not read stream ${stream}`, headers: {} };
  }

  /** Charges a key for a settled request or frame (see rate-limiter.ts for why after the fact). */
  charge(key: ApiKey, outcome: { kind: string; received: number } | null): void {
    if (key.bucket !== null) key.bucket.charge(eventCost(outcome));
  }

  /** Milliseconds until the key may send again (0: now). */
  waitMs(key: ApiKey): number {
    return key.bucket === null ? 0 : key.bucket.waitMs();
  }

  /** Called after each successful reload (WebSocket connections re-check their keys). */
  onReload(listener: () => void): void {
    this.reloadListeners.push(listener);
  }

  /** Logged at start: an open daemon must be impossible to miss in the journal. */
  announce(log: Logger): void {
    if (this.keys.open) {
      log.warn(
        { auth: "open" },
        `NO API KEYS CONFIGURED: every ingest endpoint accepts events from anyone who can reach this port. ` +
          `Set API_KEYS_FILE (or ${API_KEYS_ENV}) to require keys.`,
      );
    } else if (this.keys.size === 0) {
      log.warn({ auth: "keys", keys: 0 }, "API keys configured but none listed: every ingest request will be refused with 401");
    } else {
      log.info({ auth: "keys", keys: this.keys.size, key_ids: this.keys.keyIds }, "API keys loaded");
    }
  }

  /** SIGHUP: re-reads the keys; a bad file keeps the keys in force and logs why. */
  reload(log: Logger): boolean {
    if (this.keys.open) {
      log.warn("SIGHUP: no API keys file configured, nothing to reload (ingest stays open)");
      return false;
    }
    try {
      this.keys.reload();
    } catch (err) {
      const message = err instanceof ApiKeysError ? err.message : String(err);
      log.error({ err: message, keys: this.keys.size }, "API keys reload failed: keeping the keys loaded before");
      return false;
    }
    log.info({ keys: this.keys.size, key_ids: this.keys.keyIds }, "API keys reloaded");
    for (const listener of this.reloadListeners) listener();
    return true;
  }
}

export function isDenial(v: ApiKey | Denial): v is Denial {
  return (v as Denial).status !== undefined;
}

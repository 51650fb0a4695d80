/**
 * Which browser origins may use the API: the one owner of the CORS policy, asked by every HTTP answer
 * (the headers), by preflights and by WebSocket upgrades (docs/http-api.md#cors).
 */
import type { CorsConfig } from "../ops/config";

/** Request headers a page may send: the key headers, Prefer (respond-async), request ids, compressed bodies. */
export const CORS_ALLOWED_HEADERS = "content-type, authorization, x-api-key, prefer, x-request-id, traceparent, content-encoding";
/** Response headers a page may read besides the CORS-safelisted ones. */
const CORS_EXPOSED_HEADERS = "x-request-id, retry-after, location";
/** How long a browser may cache a preflight answer: 10 minutes (Chromium's own cap is 2 hours). */
const CORS_MAX_AGE_SECONDS = "600";

export class CorsPolicy {
  private readonly any: boolean;
  private readonly origins: ReadonlySet<string>;

  constructor(config: CorsConfig) {
    this.any = config.allowedOrigins === "*";
    this.origins = new Set(this.any ? [] : (config.allowedOrigins as string[]));
  }

  /** Whether any origin is allowed at all: with none, answers carry no CORS headers (the default). */
  get enabled(): boolean {
    return this.any || this.origins.size > 0;
  }

  /** Whether a page from `origin` (an `Origin` header value; never empty) may read the answers. */
  allows(origin: string): boolean {
    return this.any || this.origins.has(origin);
  }

  /**
   * Whether a WebSocket upgrade may proceed: no Origin header is no browser (a server-side producer, which
   * the key alone admits); a browser's page must come from an allowed origin, since browsers send cookies
   * and reach loopback daemons for any page they show.
   */
  allowsUpgrade(origin: string): boolean {
    return origin === "" || this.allows(origin);
  }

  /** The headers on every answer to an allowed origin (the origin echoed, so caches keep one per origin). */
  answerHeaders(origin: string): [string, string][] {
    return [
      ["Access-Control-Allow-Origin", origin],
      ["Vary", "Origin"],
      ["Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS],
    ];
  }

  /** The extra headers of a preflight answer for a route that takes `methods`. */
  preflightHeaders(methods: string): [string, string][] {
    return [
      ["Access-Control-Allow-Methods", methods],
      ["Access-Control-Allow-Headers", CORS_ALLOWED_HEADERS],
      ["Access-Control-Max-Age", CORS_MAX_AGE_SECONDS],
    ];
  }
}

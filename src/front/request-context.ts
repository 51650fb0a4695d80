/**
 * What an HTTP answer needs to know of its request after the uWS request object is gone: the request id
 * it echoes, the allowed origin it names in CORS headers, and the trace ids its log line carries. Taken
 * from the headers when the request arrives (http-policy.ts) and kept on the response (docs/http-api.md#request-ids).
 */
import type { Logger } from "../ops/logger";
import type { CorsPolicy } from "../security/cors";
import type { HttpResponse } from "./uws";

const kContext = Symbol("ingestd.request");

/** W3C traceparent: version-traceid-parentid-flags, lower-case hex. */
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}/;

export class RequestContext {
  constructor(
    /** The producer's X-Request-ID when it is usable, else one generated here. */
    readonly requestId: string,
    /** The request's Origin when the policy allows it (its answers carry CORS headers), else "". */
    readonly origin: string,
    /** The raw traceparent header ("" without one): parsed only when a log line needs it. */
    readonly traceparent: string,
    readonly method: string,
    /** Path without the query string (a query may hold a key). */
    readonly path: string,
    readonly cors: CorsPolicy,
    readonly log: Logger,
  ) {}

  /** The trace_id / span_id of the request's traceparent, for its log lines; {} without a valid one. */
  traceFields(): { trace_id?: string; span_id?: string } {
    const m = TRACEPARENT.exec(this.traceparent);
    if (!m || m[1] === "ff" || /^0+$/.test(m[2]) || /^0+$/.test(m[3])) return {};
    return { trace_id: m[2], span_id: m[3] };
  }
}

export function attachContext(res: HttpResponse, context: RequestContext): void {
  (res as any)[kContext] = context;
}

export function contextOf(res: HttpResponse): RequestContext | undefined {
  return (res as any)[kContext];
}

/** X-Request-ID and, for an allowed origin, the CORS headers: written on every answer, inside its cork. */
export function writeContextHeaders(res: HttpResponse): void {
  const context = contextOf(res);
  if (context === undefined) return;
  res.writeHeader("X-Request-ID", context.requestId);
  if (context.origin !== "") for (const [name, value] of context.cors.answerHeaders(context.origin)) res.writeHeader(name, value);
  // With CORS on, an answer depends on the Origin even when it grants nothing: a cache must not reuse it.
  else if (context.cors.enabled) res.writeHeader("Vary", "Origin");
}

/**
 * One log line per refused or failed request (status >= 400), with its request and trace ids; successful
 * requests are not logged (the hot path). 429s are debug: a producer over its rate would fill the journal.
 */
export function logRefusal(res: HttpResponse, status: number, error?: string, message?: string): void {
  const context = contextOf(res);
  if (context === undefined || status < 400) return;
  const level = status >= 500 ? "warn" : status === 429 ? "debug" : "info";
  if (!context.log.isLevelEnabled(level)) return;
  const fields = {
    request_id: context.requestId,
    ...context.traceFields(),
    method: context.method,
    path: context.path,
    status,
    error,
    detail: message,
  };
  context.log[level](fields, status >= 500 ? "request failed" : "request refused");
}

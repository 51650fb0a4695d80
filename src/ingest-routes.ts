/**
 * HTTP ingest endpoints. The handler checks what it can from the headers (stream, method, content type,
 * length, database state), streams the body into the ring, dispatches it to a worker and answers only
 * after the worker reports its rows committed.
 */
import { randomUUID } from "node:crypto";
import { now } from "./clock";
import { isDenial } from "./auth";
import type { ServerContext } from "./context";
import { envelopePriority } from "./envelope-priority";
import { readBodyIntoRing } from "./http-body";
import { answerError, answerJson, isClosed, markClosed } from "./http-responses";
import { LINE_ROUTER, type BodyFormat, type StreamDefinition } from "./stream-definition";
import type { HttpRequest, HttpResponse, TemplatedApp } from "./uws";
import type { IngestOutcome, TaskFormat } from "../workers/task-protocol";

const CONTENT_TYPES: Record<string, BodyFormat> = {
  "application/json": "json",
  "application/x-ndjson": "ndjson",
  "application/ndjson": "ndjson",
  "application/jsonl": "ndjson",
  "application/x-jsonlines": "ndjson",
  "text/plain": "text",
};

export type AnswerRenderer = (stream: string, outcome: IngestOutcome, durationMs: number) => { status: number; body: unknown };

export interface IngestRoute {
  /** Metrics label. */
  route: string;
  pattern: string;
  /** Fixed stream (or LINE_ROUTER), or null to take it from the first path parameter. */
  stream: string | null;
  /** Body is the `{events, batch_id?, priority?}` envelope. */
  envelope: boolean;
  /** Body format whatever the content type says (the TPC-H line endpoints take raw lines). */
  format?: BodyFormat;
  /** Shapes the answer; the canonical SPEC §3 shape by default. */
  render?: AnswerRenderer;
}

/** The X-Ingest-Priority values, at their own index. */
const PRIORITY_VALUES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

function formatOf(contentType: string): BodyFormat | null {
  const base = contentType.split(";", 1)[0].trim().toLowerCase();
  return CONTENT_TYPES[base] ?? null;
}

/** Maps a settled task to its HTTP status and body (SPEC §3). */
export function ingestAnswer(stream: string, outcome: IngestOutcome, durationMs: number): { status: number; body: unknown } {
  const base = { stream, batch_id: outcome.batchId };
  switch (outcome.kind) {
    case "unparseable":
      return { status: 400, body: { status: "error", error: "malformed_body", message: outcome.message, ...base } };
    case "db_unavailable":
      return { status: 503, body: { status: "error", error: "database_unavailable", message: "database unavailable or not answering within the deadline; nothing from this request was stored, retry later", ...base } };
    case "failed":
      return { status: 500, body: { status: "error", error: "internal", message: outcome.message, ...base } };
  }
  const status = outcome.rejected === 0 ? 200 : outcome.accepted + outcome.duplicates > 0 ? 207 : 422;
  const body: Record<string, unknown> = {
    status: status === 200 ? "success" : status === 207 ? "partial" : "rejected",
    ...base,
    accepted: outcome.accepted,
    rejected: outcome.rejected,
    duplicates: outcome.duplicates,
    errors: outcome.errors,
    duration_ms: Math.round(durationMs * 1000) / 1000,
  };
  if (outcome.errorsTruncated) body.errors_truncated = true;
  return { status, body };
}

export function registerIngestRoute(app: TemplatedApp, ctx: ServerContext, route: IngestRoute): void {
  const { config, ring, dispatcher, metrics, db } = ctx;
  const maxBody = config.maxBodyMb * 1024 * 1024;
  const retryAfter = { "Retry-After": String(config.retryAfterSeconds) };
  const render = route.render ?? ingestAnswer;

  const handler = (res: HttpResponse, req: HttpRequest) => {
    const receivedAt = now();
    const streamName = route.stream ?? req.getParameter(0);
    const contentType = req.getHeader("content-type");
    const lengthHeader = req.getHeader("content-length");
    const respondAsync = /\brespond-async\b/i.test(req.getHeader("prefer"));
    // A priority named outside the body is known before the body is read (README "Priority").
    const priorityHeader = req.getHeader("x-ingest-priority");
    // Security: the key is read with the other headers (a uWS request does not outlive this call).
    const caller = ctx.auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const count = (s: number) => metrics.httpRequests.inc({ route: route.route, status: String(s) });
    res.onAborted(() => {
      markClosed(res);
      reader?.abort();
    });
    let reader: { abort(): void } | null = null;

    // With a plain Content-Length uWS itself skips a body nobody reads once the answer is written, so an
    // early refusal (413, 415, 503...) can keep the connection. Closing instead while a big body is still
    // arriving resets the socket: the producer gets EPIPE/ECONNRESET and never reads the 413.
    const framed = /^\d+$/.test(lengthHeader) && req.getHeader("transfer-encoding") === "";
    const fail = (s: number, code: string, message: string, headers?: Record<string, string>, close = !framed) => {
      count(s);
      // Otherwise the body was not (fully) read: close so it cannot be misread as the next request.
      answerError(res, s, code, message, { headers, close });
    };

    if (isDenial(caller)) return fail(caller.status, caller.code, caller.message, caller.headers);
    const stream: Pick<StreamDefinition, "name" | "formats"> | undefined =
      streamName === LINE_ROUTER ? { name: LINE_ROUTER, formats: ["text"] } : ctx.streams.get(streamName);
    if (!stream) return fail(404, "unknown_stream", `unknown stream "${streamName}"; streams: ${[...ctx.streams.keys()].join(", ")}`);
    // Security: 403 for a stream the key may not write, 429 while the key's rate bucket is in debt.
    const denied = ctx.auth.permit(caller, stream.name);
    if (denied) return fail(denied.status, denied.code, denied.message, denied.headers);
    if (ctx.draining) return fail(503, "shutting_down", "ingestd is shutting down; retry on another instance or later", retryAfter);
    const format = route.format ?? formatOf(contentType);
    if (format === null || !stream.formats.includes(format) || (route.envelope && format !== "json")) {
      const accepted = route.envelope ? ["json"] : stream.formats;
      const types = Object.keys(CONTENT_TYPES).filter((t) => accepted.includes(CONTENT_TYPES[t]));
      return fail(415, "unsupported_media_type", `content type ${JSON.stringify(contentType || "(none)")} not accepted by stream ${streamName}; use ${types.join(", ")}`);
    }
    if (lengthHeader === "") return fail(411, "length_required", "Content-Length header is required");
    const length = Number(lengthHeader);
    if (!Number.isSafeInteger(length) || length < 0) return fail(400, "bad_content_length", "Content-Length is not a valid length");
    if (length > maxBody) return fail(413, "body_too_large", `body of ${length} bytes exceeds the limit of ${maxBody} bytes (MAX_BODY_MB)`);
    if (length === 0) return fail(400, "empty_body", "request body is empty");
    const priority = priorityHeader === "" ? 0 : PRIORITY_VALUES.indexOf(priorityHeader.trim());
    if (priority < 0) return fail(400, "bad_priority", "X-Ingest-Priority must be an integer from 0 to 10");
    if (!db.up) return fail(503, "database_unavailable", "database unavailable; nothing was stored, retry later", retryAfter);

    const classify = route.envelope ? envelopePriority : undefined;
    reader = readBodyIntoRing(res, { ring, length, priority, deadlineMs: config.overloadDeadlineMs, classify }, (body) => {
      if (!body.ok) {
        if (body.reason === "overloaded") return fail(503, "overloaded", "ingestd is overloaded; nothing was stored, retry later", retryAfter, true);
        if (body.reason === "truncated") return fail(400, "truncated_body", "request body ended before Content-Length bytes", undefined, true);
        return; // aborted: nobody to answer
      }
      const batchId = randomUUID();
      const submission = {
        stream: stream.name,
        format: format as TaskFormat,
        envelope: route.envelope,
        region: body.region,
        batchId,
        priority: body.priority,
        receivedAt,
        ringAt: body.ringAt,
        source: "http",
        recordBatch: true,
      };
      ctx.batches.begin(batchId, stream.name, Date.now());
      if (respondAsync) {
        count(202);
        answerJson(res, 202, { status: "accepted", stream: stream.name, batch_id: batchId });
      }
      void dispatcher.run(submission).then((outcome) => {
        ring.free(body.region);
        ctx.auth.charge(caller, outcome); // rate limit: charged once the event count is known
        ctx.batches.settle(batchId, outcome.kind === "db_unavailable" || outcome.kind === "failed" ? outcome.message : null);
        // Counted whether or not anyone is still listening: the rows are committed either way.
        dispatcher.observeAck(stream.name, "http", receivedAt, outcome);
        if (respondAsync || isClosed(res)) return;
        const { status: s, body: answerBody } = render(stream.name, outcome, now() - receivedAt);
        count(s);
        answerJson(res, s, answerBody, s === 503 ? { headers: retryAfter } : {});
      });
    });
  };

  app.post(route.pattern, handler);
  app.any(route.pattern, (res, req) => {
    res.onAborted(() => markClosed(res));
    metrics.httpRequests.inc({ route: route.route, status: "405" });
    answerError(res, 405, "method_not_allowed", `${req.getMethod().toUpperCase()} not allowed; use POST`, { headers: { Allow: "POST" }, close: true });
  });
}

/**
 * HTTP ingest endpoints: a thin adapter over the submission owners. The handler checks what it can from the
 * headers (admission, content type, length, database state), streams the body into the ring, and answers
 * once the submitter reports the body's outcome (after commit). See docs/http-api.md.
 */
import { randomUUID } from "node:crypto";
import { now } from "../../shared/clock";
import type { BodyFormat } from "../../shared/stream-definition";
import type { BodyEncoding, TaskFormat } from "../../shared/task-protocol";
import { envelopePriority } from "../envelope-priority";
import { answerError, answerJson, answerRefusal, isClosed, markClosed } from "../http-responses";
import { isRefusal, type Refusal } from "../submission/admission";
import { canonicalAnswer, type AnswerRenderer } from "../submission/answers";
import type { Pipeline } from "../submission/pipeline";
import type { HttpRequest, HttpResponse, TemplatedApp } from "../uws";
import { readBodyIntoRing } from "./http-body";

const CONTENT_TYPES: Record<string, BodyFormat> = {
  "application/json": "json",
  "application/x-ndjson": "ndjson",
  "application/ndjson": "ndjson",
  "application/jsonl": "ndjson",
  "application/x-jsonlines": "ndjson",
  "text/plain": "text",
};

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
  /** Shapes the answer; the canonical one by default. */
  render?: AnswerRenderer;
}

/** The X-Ingest-Priority values, at their own index. */
const PRIORITY_VALUES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/** The priority an X-Ingest-Priority header names (0 when absent), or -1 when it names none. */
function headerPriority(header: string): number {
  return header === "" ? 0 : PRIORITY_VALUES.indexOf(header.trim());
}

/** Content-Encoding values taken (compressed bodies are inflated in the workers; docs/http-api.md#compressed-bodies). */
const ENCODINGS = new Map<string, BodyEncoding>([
  ["", "identity"],
  ["identity", "identity"],
  ["gzip", "gzip"],
  ["x-gzip", "gzip"],
  ["deflate", "deflate"],
  ["br", "br"],
]);

function formatOf(contentType: string): BodyFormat | null {
  const base = contentType.split(";", 1)[0].trim().toLowerCase();
  return CONTENT_TYPES[base] ?? null;
}

/**
 * The task format of a body: its content type's, except `text/plain` on a stream of JSON records, which is
 * what `navigator.sendBeacon` sends for a string (no other type goes without a preflight): the workers read
 * it as one JSON value, else as NDJSON ("auto"). On the envelope route it is the envelope's JSON.
 */
function taskFormat(route: IngestRoute, formats: readonly BodyFormat[], contentType: string): TaskFormat | null {
  const format = route.format ?? formatOf(contentType);
  if (format === "text" && !formats.includes("text") && formats.includes("json")) return route.envelope ? "json" : "auto";
  if (format === null || !formats.includes(format) || (route.envelope && format !== "json")) return null;
  return format;
}

/** 415 naming an encoding this daemon does not inflate (or a list of several). */
function encodingRefusal(header: string): Refusal {
  return {
    status: 415,
    code: "unsupported_content_encoding",
    message: `Content-Encoding ${JSON.stringify(header)} not supported; use one of gzip, deflate, br (or none)`,
    headers: { "Accept-Encoding": "gzip, deflate, br" },
  };
}

/** 415, 411, 400 or 413 for what the headers say of the body, or null. */
function bodyRefusal(
  route: IngestRoute,
  formats: readonly BodyFormat[],
  streamName: string,
  contentType: string,
  lengthHeader: string,
  maxBody: number,
): Refusal | null {
  if (taskFormat(route, formats, contentType) === null) {
    const accepted = route.envelope ? ["json"] : formats;
    const types = Object.keys(CONTENT_TYPES).filter(
      (t) => accepted.includes(CONTENT_TYPES[t]) || (t === "text/plain" && accepted.includes("json")),
    );
    return {
      status: 415,
      code: "unsupported_media_type",
      message: `content type ${JSON.stringify(contentType || "(none)")} not accepted by stream ${streamName}; use ${types.join(", ")}`,
    };
  }
  if (lengthHeader === "") return { status: 411, code: "length_required", message: "Content-Length header is required" };
  const length = Number(lengthHeader);
  if (!Number.isSafeInteger(length) || length < 0)
    return { status: 400, code: "bad_content_length", message: "Content-Length is not a valid length" };
  if (length > maxBody)
    return { status: 413, code: "body_too_large", message: `body of ${length} bytes exceeds the limit of ${maxBody} bytes (MAX_BODY_MB)` };
  if (length === 0) return { status: 400, code: "empty_body", message: "request body is empty" };
  return null;
}

export function registerIngestRoute(app: TemplatedApp, pipeline: Pipeline, route: IngestRoute): void {
  const { auth, admission, ring, submitter, telemetry, metrics, limits } = pipeline;
  const retryAfter = { "Retry-After": String(limits.retryAfterSeconds) };
  const render = route.render ?? canonicalAnswer;

  const handler = (res: HttpResponse, req: HttpRequest) => {
    const receivedAt = now();
    const streamName = route.stream ?? req.getParameter(0);
    const contentType = req.getHeader("content-type");
    const lengthHeader = req.getHeader("content-length");
    const respondAsync = /\brespond-async\b/i.test(req.getHeader("prefer"));
    // A priority named outside the body is known before the body is read (docs/architecture.md#priority).
    const priority = headerPriority(req.getHeader("x-ingest-priority"));
    const encodingHeader = req.getHeader("content-encoding");
    const encoding = ENCODINGS.get(encodingHeader.trim().toLowerCase());
    // The key is read with the other headers: a uWS request does not outlive this call. `?key=` is for
    // beacons, which cannot set headers (docs/http-api.md#beacons).
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"), req.getQuery("key") ?? "");
    const count = (s: number) => metrics.httpRequests.inc({ route: route.route, status: String(s) });
    let reader: { abort(): void } | null = null;
    res.onAborted(() => {
      markClosed(res);
      reader?.abort();
    });

    // With a plain Content-Length uWS itself skips a body nobody reads once the answer is written, so an
    // early refusal (413, 415, 503...) can keep the connection. Closing instead while a big body is still
    // arriving resets the socket: the producer gets EPIPE/ECONNRESET and never reads the 413.
    const framed = /^\d+$/.test(lengthHeader) && req.getHeader("transfer-encoding") === "";
    const refuse = (r: Refusal, close = !framed) => {
      count(r.status);
      // Otherwise the body was not (fully) read: close so it cannot be misread as the next request.
      answerRefusal(res, r, close);
    };

    const admitted = admission.admit(caller, streamName);
    if (isRefusal(admitted)) return refuse(admitted);
    const { stream, key } = admitted;
    const refusal =
      bodyRefusal(route, stream.formats, streamName, contentType, lengthHeader, limits.maxBodyBytes) ??
      (priority < 0 ? { status: 400, code: "bad_priority", message: "X-Ingest-Priority must be an integer from 0 to 10" } : null) ??
      (encoding === undefined ? encodingRefusal(encodingHeader) : null) ??
      admission.database();
    if (refusal) return refuse(refusal);
    const format = taskFormat(route, stream.formats, contentType)!;

    const classify = route.envelope ? envelopePriority : undefined;
    reader = readBodyIntoRing(
      res,
      { ring, length: Number(lengthHeader), priority, deadlineMs: limits.overloadDeadlineMs, classify },
      (body) => {
        if (!body.ok) {
          if (body.reason === "overloaded")
            return refuse(
              { status: 503, code: "overloaded", message: "ingestd is overloaded; nothing was stored, retry later", headers: retryAfter },
              true,
            );
          if (body.reason === "truncated")
            return refuse({ status: 400, code: "truncated_body", message: "request body ended before Content-Length bytes" }, true);
          return; // aborted: nobody to answer
        }
        const requestId = randomUUID();
        const settled = submitter.commit(
          {
            stream: stream.name,
            format,
            encoding: encoding!,
            envelope: route.envelope,
            region: body.region,
            requestId,
            priority: body.priority,
            receivedAt,
            ringAt: body.ringAt,
            source: "http",
            recordBatch: true,
          },
          key,
          { retryUntil: 0 },
        );
        if (respondAsync) {
          // The 202 goes out once the pending row is written, so a poll on any daemon finds the id
          // (docs/storage.md#batch-status-across-daemons); if it cannot be, or PostgreSQL does not answer
          // within the overload deadline, this daemon still answers for it.
          const published = pipeline.batches.publish(requestId);
          const deadline = new Promise((r) => setTimeout(r, limits.overloadDeadlineMs).unref());
          void Promise.race([published, deadline]).then(() => {
            count(202);
            if (!isClosed(res)) answerJson(res, 202, { status: "accepted", stream: stream.name, batch_id: requestId });
          });
        }
        void settled.then((outcome) => {
          // Counted whether or not anyone is still listening: the rows are committed either way.
          telemetry.acknowledged(stream.name, "http", receivedAt, outcome);
          if (respondAsync || isClosed(res)) return;
          const { status, body: answerBody } = render(stream.name, outcome, now() - receivedAt);
          count(status);
          answerJson(res, status, answerBody, status === 503 ? { headers: retryAfter } : {});
        });
      },
    );
  };

  app.post(route.pattern, handler);
  app.any(route.pattern, (res, req) => {
    res.onAborted(() => markClosed(res));
    metrics.httpRequests.inc({ route: route.route, status: "405" });
    answerError(res, 405, "method_not_allowed", `${req.getMethod().toUpperCase()} not allowed; use POST`, {
      headers: { Allow: "POST" },
      close: true,
    });
  });
}

/**
 * The TPC-H line endpoints of the designs ingestd descends from: `/ingest/message` (one line),
 * `/ingest/batch` (many lines) and `/ingest/stream` (a chunked upload answered with server-sent events).
 * Lines are routed by prefix (`O|`, `L|`, `C|`, `P|`) in the workers; these routes only shape answers.
 */
import { randomUUID } from "node:crypto";
import { now } from "../../shared/clock";
import type { ApiKey } from "../../security/api-keys";
import { isDenial } from "../../security/auth";
import type { ServerContext } from "../context";
import { answerError, isClosed, markClosed } from "../http-responses";
import { registerIngestRoute, type AnswerRenderer } from "./http-ingest";
import type { RingRegion } from "../ring";
import { LINE_ROUTER } from "../../shared/stream-definition";
import type { HttpRequest, HttpResponse, TemplatedApp } from "../uws";
import type { IngestOutcome, RecordError } from "../../shared/task-protocol";

interface LineError {
  line_number: number;
  entity: string;
  message: string;
  line: string;
}

function lineErrors(errors: RecordError[], lineOffset = 0): LineError[] {
  return errors.map((e) => ({
    line_number: (e.line ?? e.index + 1) + lineOffset,
    entity: e.entity ?? "Unknown",
    message: e.message.replace(/^line \d+: /, ""),
    line: e.text ?? "",
  }));
}

function failureAnswer(outcome: IngestOutcome): { status: number; body: unknown } | null {
  if (outcome.kind === "done") return null;
  const status = outcome.kind === "unparseable" ? 400 : outcome.kind === "db_unavailable" ? 503 : 500;
  const message = outcome.kind === "db_unavailable" ? "database unavailable; nothing was stored, retry later" : outcome.message;
  return { status, body: { status: "error", message } };
}

const renderMessage: AnswerRenderer = (_stream, outcome) => {
  const failed = failureAnswer(outcome);
  if (failed) return failed;
  if (outcome.rejected > 0 || outcome.first === null) {
    const e = outcome.errors[0];
    return { status: 400, body: { status: "error", message: e ? e.message.replace(/^line \d+: /, "") : "line not stored", entity: e?.entity ?? "Unknown", line: e?.text ?? "" } };
  }
  return { status: 200, body: { status: "success", entity: outcome.first.entity, id: outcome.first.id, timestamp: new Date().toISOString() } };
};

const renderBatch: AnswerRenderer = (_stream, outcome, durationMs) => {
  const failed = failureAnswer(outcome);
  if (failed) return failed;
  const status = outcome.rejected === 0 ? 200 : outcome.accepted > 0 ? 207 : 422;
  return {
    status,
    body: {
      status: status === 200 ? "success" : status === 207 ? "partial" : "failed",
      processed: outcome.received,
      inserted: outcome.accepted,
      failed: outcome.rejected,
      errors: lineErrors(outcome.errors),
      duration_ms: Math.round(durationMs * 1000) / 1000,
    },
  };
};

/** Lines are committed in segments of about this size, each one task and one progress event. */
const SEGMENT_BYTES = 256 * 1024;
const DB_RETRY_MS = 250;

function registerStream(app: TemplatedApp, ctx: ServerContext): void {
  const { ring, dispatcher, metrics, config } = ctx;
  const maxLine = config.maxBodyMb * 1024 * 1024;
  const count = (status: number) => metrics.httpRequests.inc({ route: "/ingest/stream", status: String(status) });

  app.post("/ingest/stream", (res: HttpResponse, req: HttpRequest) => {
    const receivedAt = now();
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
      markClosed(res);
    });
    // Security: the same gate as the other line endpoints (stream "tpch"); see src/security/auth.ts.
    const caller = ctx.auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const denied = isDenial(caller) ? caller : ctx.auth.permit(caller, LINE_ROUTER);
    if (denied) {
      count(denied.status);
      answerError(res, denied.status, denied.code, denied.message, { headers: denied.headers, close: true });
      return;
    }
    const key = caller as ApiKey;
    if (ctx.draining || !ctx.db.up) {
      count(503);
      answerError(res, 503, ctx.draining ? "shutting_down" : "database_unavailable", "retry later", { headers: { "Retry-After": String(config.retryAfterSeconds) }, close: true });
      return;
    }

    const totals = { total: 0, inserted: 0, failed: 0 };
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let linesDone = 0;
    let inFlight = false;
    let ended = false;
    let paused = false;
    let finished = false;
    let segmentNo = 0;

    count(200);
    res.cork(() => {
      res.writeStatus("200 OK");
      res.writeHeader("Content-Type", "text/event-stream");
      res.writeHeader("Cache-Control", "no-cache");
      res.write(": ingestd stream\n\n");
    });

    const send = (event: unknown, name?: string) => {
      if (aborted || isClosed(res)) return;
      res.cork(() => res.write(`${name ? `event: ${name}\n` : ""}data: ${JSON.stringify(event)}\n\n`));
    };
    const finish = (error?: string) => {
      if (finished) return;
      finished = true;
      if (error) send({ status: "error", message: error, ...totals }, "error");
      send({ ...totals, duration_ms: Math.round((now() - receivedAt) * 1000) / 1000 });
      if (!aborted && !isClosed(res)) {
        markClosed(res);
        res.cork(() => res.end());
      }
      // The whole upload as one outcome, so /stats and the events metric count the lines it committed.
      const summary: IngestOutcome = {
        kind: "done", batchId: "", priority: 0, received: totals.total, accepted: totals.inserted, rejected: totals.failed, duplicates: 0,
        errors: [], errorsTruncated: false, message: error ?? "", first: null, validatedAt: 0, committedAt: 0, copyMs: 0,
      };
      dispatcher.observeAck(LINE_ROUTER, "http", receivedAt, summary);
    };

    /** Cuts the pending bytes at the last newline (or all of them at the end) and commits that segment. */
    const pump = () => {
      if (inFlight || finished || aborted) return;
      if (pendingBytes === 0) {
        if (ended) finish();
        return;
      }
      const all = Buffer.concat(pending, pendingBytes);
      let cut = ended ? all.length : all.lastIndexOf(10) + 1;
      if (cut === 0) {
        if (all.length > maxLine) finish(`a line is longer than ${maxLine} bytes`);
        pending = [all];
        return;
      }
      if (!ended && cut < SEGMENT_BYTES && all.length < SEGMENT_BYTES) {
        pending = [all];
        return;
      }
      const segment = all.subarray(0, cut);
      const rest = all.subarray(cut);
      pending = rest.length > 0 ? [Buffer.from(rest)] : [];
      pendingBytes = rest.length;
      inFlight = true;
      const next = () => {
        inFlight = false;
        if (paused && pendingBytes < 2 * SEGMENT_BYTES) {
          paused = false;
          if (!aborted) res.resume();
        }
        pump();
      };
      // Rate limit: a key in debt waits before its next segment (reads stay paused meanwhile).
      void commitSegment(segment).then(() => {
        const wait = ctx.auth.waitMs(key);
        if (wait > 0 && !aborted && !finished && !ctx.draining) setTimeout(next, wait);
        else next();
      });
    };

    const commitSegment = async (segment: Buffer) => {
      let lines = 0;
      for (let i = 0; i < segment.length; i++) if (segment[i] === 10) lines++;
      if (segment.length > 0 && segment[segment.length - 1] !== 10) lines++;
      const region: RingRegion | null = await ring.alloc(segment.length, 0, config.overloadDeadlineMs);
      if (region === null) return finish("ingestd overloaded; lines after the last progress event were not stored");
      ring.bytes.set(segment, region.offset);
      const batchNo = ++segmentNo;
      const firstFailure = now();
      try {
        for (;;) {
          const outcome = await dispatcher.run({
            stream: LINE_ROUTER, format: "text", envelope: false, region, requestId: randomUUID(), priority: 0,
            receivedAt, ringAt: now(), source: "http /ingest/stream", recordBatch: true,
          });
          if (outcome.kind === "db_unavailable") {
            if (aborted || now() - firstFailure > config.overloadDeadlineMs) return finish("database unavailable; lines after the last progress event were not stored");
            await new Promise((r) => setTimeout(r, DB_RETRY_MS));
            continue;
          }
          ctx.auth.charge(key, outcome);
          if (outcome.kind !== "done") return finish(outcome.message);
          totals.total += outcome.received;
          totals.inserted += outcome.accepted;
          totals.failed += outcome.rejected;
          send({ batch: batchNo, processed: outcome.received, inserted: outcome.accepted, failed: outcome.rejected, errors: lineErrors(outcome.errors, linesDone), ...{ total: totals.total } });
          linesDone += lines;
          return;
        }
      } finally {
        ring.free(region);
      }
    };

    res.onData((chunk, isLast) => {
      if (finished) return;
      if (chunk.byteLength > 0) {
        pending.push(Buffer.from(new Uint8Array(chunk)));
        pendingBytes += chunk.byteLength;
      }
      if (isLast) ended = true;
      // Stop reading while a segment commits and two more are already waiting: memory stays bounded.
      if (!ended && inFlight && pendingBytes >= 2 * SEGMENT_BYTES && !paused) {
        paused = true;
        res.pause();
      }
      pump();
    });
  });
}

export function registerTpchRoutes(app: TemplatedApp, ctx: ServerContext): void {
  registerIngestRoute(app, ctx, { route: "/ingest/message", pattern: "/ingest/message", stream: LINE_ROUTER, envelope: false, format: "text", render: renderMessage });
  registerIngestRoute(app, ctx, { route: "/ingest/batch", pattern: "/ingest/batch", stream: LINE_ROUTER, envelope: false, format: "text", render: renderBatch });
  registerStream(app, ctx);
}

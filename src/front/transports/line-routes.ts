/**
 * The TPC-H line endpoints of the designs ingestd descends from: `/ingest/message` (one line),
 * `/ingest/batch` (many lines) and `/ingest/stream` (a chunked upload answered with server-sent events).
 * Lines are routed by prefix (`O|`, `L|`, `C|`, `P|`) in the workers; these adapters only cut the upload
 * and shape answers (docs/http-api.md#tpc-h-line-endpoints).
 */
import { randomUUID } from "node:crypto";
import { now } from "../../shared/clock";
import { LINE_ROUTER } from "../../shared/stream-definition";
import type { IngestOutcome } from "../../shared/task-protocol";
import { answerRefusal, isClosed, markClosed } from "../http-responses";
import { isRefusal, type Refusal } from "../submission/admission";
import { lineBatchAnswer, lineMessageAnswer, lineProgress } from "../submission/answers";
import type { Pipeline } from "../submission/pipeline";
import type { HttpRequest, HttpResponse, TemplatedApp } from "../uws";
import { registerIngestRoute } from "./http-ingest";

/** Lines are committed in segments of about this size, each one task and one progress event. */
const SEGMENT_BYTES = 256 * 1024;

function registerStream(app: TemplatedApp, pipeline: Pipeline): void {
  const { auth, admission, ring, submitter, telemetry, metrics, limits } = pipeline;
  const maxLine = limits.maxBodyBytes;
  const count = (status: number) => metrics.httpRequests.inc({ route: "/ingest/stream", status: String(status) });

  app.post("/ingest/stream", (res: HttpResponse, req: HttpRequest) => {
    const receivedAt = now();
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
      markClosed(res);
    });
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const refuse = (r: Refusal) => {
      count(r.status);
      answerRefusal(res, r, true);
    };
    const admitted = admission.admit(caller, LINE_ROUTER);
    if (isRefusal(admitted)) return refuse(admitted);
    const databaseDown = admission.database();
    if (databaseDown) return refuse(databaseDown);
    const { key } = admitted;

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
        kind: "done",
        batchId: "",
        priority: 0,
        received: totals.total,
        accepted: totals.inserted,
        rejected: totals.failed,
        duplicates: 0,
        errors: [],
        errorsTruncated: false,
        message: error ?? "",
        first: null,
        validatedAt: 0,
        committedAt: 0,
        copyMs: 0,
      };
      telemetry.acknowledged(LINE_ROUTER, "http", receivedAt, summary);
    };

    /** Cuts the pending bytes at the last newline (or all of them at the end) and commits that segment. */
    const pump = () => {
      if (inFlight || finished || aborted) return;
      if (pendingBytes === 0) {
        if (ended) finish();
        return;
      }
      const all = Buffer.concat(pending, pendingBytes);
      const cut = ended ? all.length : all.lastIndexOf(10) + 1;
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
        const wait = auth.waitMs(key);
        if (wait > 0 && !aborted && !finished && !admission.isDraining) setTimeout(next, wait);
        else next();
      });
    };

    const commitSegment = async (segment: Buffer) => {
      let lines = 0;
      for (let i = 0; i < segment.length; i++) if (segment[i] === 10) lines++;
      if (segment.length > 0 && segment[segment.length - 1] !== 10) lines++;
      const region = await ring.alloc(segment.length, 0, limits.overloadDeadlineMs);
      if (region === null) return finish("ingestd overloaded; lines after the last progress event were not stored");
      ring.bytes.set(segment, region.offset);
      const batchNo = ++segmentNo;
      const outcome = await submitter.commit(
        {
          stream: LINE_ROUTER,
          format: "text",
          envelope: false,
          region,
          requestId: randomUUID(),
          priority: 0,
          receivedAt,
          ringAt: now(),
          source: "http /ingest/stream",
          recordBatch: true,
        },
        key,
        { retryUntil: now() + limits.overloadDeadlineMs, wanted: () => !aborted },
      );
      if (outcome.kind === "db_unavailable") return finish("database unavailable; lines after the last progress event were not stored");
      if (outcome.kind !== "done") return finish(outcome.message);
      totals.total += outcome.received;
      totals.inserted += outcome.accepted;
      totals.failed += outcome.rejected;
      send(lineProgress(batchNo, outcome, linesDone, totals.total));
      linesDone += lines;
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

export function registerLineRoutes(app: TemplatedApp, pipeline: Pipeline): void {
  registerIngestRoute(app, pipeline, {
    route: "/ingest/message",
    pattern: "/ingest/message",
    stream: LINE_ROUTER,
    envelope: false,
    format: "text",
    render: lineMessageAnswer,
  });
  registerIngestRoute(app, pipeline, {
    route: "/ingest/batch",
    pattern: "/ingest/batch",
    stream: LINE_ROUTER,
    envelope: false,
    format: "text",
    render: lineBatchAnswer,
  });
  registerStream(app, pipeline);
}

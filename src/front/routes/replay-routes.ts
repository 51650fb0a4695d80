/**
 * `POST /v1/dead-letters/replay` (docs/http-api.md#replaying-dead-letters): a thin adapter. Holding the
 * stream's replay lock, it reads the dead letters not yet replayed and hands their raw text to the
 * submission path as bodies of the stream, each carrying the ids it replays (marked in the body's commit:
 * stored once or not at all); then counts what is now accepted and what is still rejected.
 */
import type { ApiKey } from "../../security/api-keys";
import { LINE_ROUTER, type StreamDefinition } from "../../shared/stream-definition";
import type { RecordError } from "../../shared/task-protocol";
import { beginReplay, endReplay, pendingDeadLetters, type PendingLetter, type ReplaySelection } from "../../storage/dead-letters";
import { ReadQueryError } from "../../storage/read-query";
import type { ReadPool } from "../../storage/read-pool";
import { answerError, answerJson, answerRefusal, markClosed } from "../http-responses";
import { isRefusal } from "../submission/admission";
import { submitInternalBody } from "../submission/internal-bodies";
import type { Pipeline } from "../submission/pipeline";
import type { HttpResponse, TemplatedApp } from "../uws";
import { answerReadFailure, type ReadAccess } from "./read-routes";

/** A replay request is a few ids or a time: anything longer is not one. */
const MAX_REQUEST_BYTES = 256 * 1024;
/** Dead letters per body handed to the workers (each body is one group-commit task). */
const BODY_CHARS = 1024 * 1024;

export interface ReplayRoutesOptions extends ReadAccess {
  pipeline: Pipeline;
}

interface ReplayRequest {
  stream: string;
  selection: ReplaySelection;
}

/** The request body checked, or ReadQueryError naming the field. */
function replayRequest(text: string): ReplayRequest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ReadQueryError("$", `body: not JSON (${(err as Error).message}); send {"stream","ids"} or {"stream","since"}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ReadQueryError("$", `body: expected an object {"stream","ids"} or {"stream","since"}`);
  }
  const v = value as Record<string, unknown>;
  for (const field of Object.keys(v)) {
    if (!["stream", "ids", "since"].includes(field))
      throw new ReadQueryError(field, `${field}: unknown field; send stream and ids or since`);
  }
  if (typeof v.stream !== "string" || v.stream === "") throw new ReadQueryError("stream", "stream: expected a stream name");
  if ((v.ids === undefined) === (v.since === undefined)) throw new ReadQueryError("ids", "ids / since: give exactly one of them");
  if (v.ids !== undefined) {
    if (!Array.isArray(v.ids) || v.ids.length === 0 || v.ids.length > 1000) {
      throw new ReadQueryError("ids", "ids: expected an array of 1 to 1000 dead-letter ids");
    }
    const ids = v.ids.map((id, i) => {
      const text = typeof id === "number" && Number.isSafeInteger(id) && id > 0 ? String(id) : typeof id === "string" ? id : "";
      if (!/^[1-9]\d{0,18}$/.test(text))
        throw new ReadQueryError(`ids[${i}]`, `ids[${i}]: expected a dead-letter id, got ${JSON.stringify(id)}`);
      return text;
    });
    return { stream: v.stream, selection: { ids } };
  }
  if (typeof v.since !== "string" || Number.isNaN(Date.parse(v.since)) || !/^\d{4}-\d{2}-\d{2}/.test(v.since)) {
    throw new ReadQueryError("since", `since: expected an ISO-8601 time, got ${JSON.stringify(v.since)}`);
  }
  return { stream: v.stream, selection: { since: v.since } };
}

/** Dead letters grouped into bodies: JSON records one a line (NDJSON), text lines as lines. */
function bodiesOf(letters: readonly PendingLetter[]): PendingLetter[][] {
  const bodies: PendingLetter[][] = [];
  let current: PendingLetter[] = [];
  let chars = 0;
  for (const letter of letters) {
    // A dead letter holding a whole unreadable body (several lines) goes alone: it is read as one body again.
    const alone = letter.raw.includes("\n");
    if (current.length > 0 && (alone || chars + letter.raw.length > BODY_CHARS)) {
      bodies.push(current);
      current = [];
      chars = 0;
    }
    current.push(letter);
    chars += letter.raw.length + 1;
    if (alone) {
      bodies.push(current);
      current = [];
      chars = 0;
    }
  }
  if (current.length > 0) bodies.push(current);
  return bodies;
}

interface ReplayTally {
  replayed: number;
  accepted: number;
  duplicates: number;
  rejected: number;
  errors: Array<{ id: number; path: string; expected: string; message: string }>;
  /** Not committed (the database could not take them): still replayable. */
  notReplayed: number;
  failure: string | null;
}

async function replay(
  options: ReplayRoutesOptions,
  key: ApiKey,
  stream: StreamDefinition | null,
  letters: PendingLetter[],
): Promise<ReplayTally> {
  const tally: ReplayTally = { replayed: 0, accepted: 0, duplicates: 0, rejected: 0, errors: [], notReplayed: 0, failure: null };
  const lines = stream === null || stream.formats.includes("text");
  const target = stream?.name ?? LINE_ROUTER;
  const bodies = bodiesOf(letters);
  for (let b = 0; b < bodies.length; b++) {
    const body = bodies[b];
    const text = body.map((l) => l.raw).join("\n");
    // A multi-line dead letter of a JSON stream is a whole body that could not be read (NDJSON bodies keep
    // a dead letter per line): it is read again as the one JSON value it was meant to be.
    const format = lines ? "text" : body.length === 1 && body[0].raw.includes("\n") ? "json" : "ndjson";
    const replayOf = body.map((l) => l.id);
    const outcome =
      tally.failure === null
        ? await submitInternalBody(options.pipeline, key, { stream: target, format, text, source: "replay", transport: "http", replayOf })
        : null;
    if (outcome === null || outcome.kind === "db_unavailable" || outcome.kind === "failed") {
      tally.failure ??= outcome?.message ?? "";
      tally.notReplayed += body.length;
      continue;
    }
    tally.replayed += body.length;
    if (outcome.kind !== "done") {
      // Unreadable again (or too large): still rejected, and kept as a new dead letter by the worker.
      tally.rejected += body.length;
      if (tally.errors.length < 100)
        tally.errors.push({ id: Number(body[0].id), path: "$", expected: "a readable body", message: outcome.message });
      continue;
    }
    tally.accepted += outcome.accepted;
    tally.duplicates += outcome.duplicates;
    tally.rejected += outcome.rejected;
    for (const e of outcome.errors as RecordError[]) {
      if (tally.errors.length >= 100) break;
      const letter = body[e.index];
      tally.errors.push({ id: Number(letter?.id ?? body[0].id), path: e.path, expected: e.expected, message: e.message });
    }
  }
  return tally;
}

export function registerReplayRoutes(app: TemplatedApp, options: ReplayRoutesOptions): void {
  const { pipeline, auth, pool, schema, streams, metrics, retryAfterSeconds } = options;
  const route = "/v1/dead-letters/replay";
  app.post(route, (res: HttpResponse, req) => {
    const count = (status: number) => metrics.httpRequests.inc({ route, status: String(status) });
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const chunks: Buffer[] = [];
    let size = 0;
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
      markClosed(res);
    });
    res.onData((chunk, isLast) => {
      if (aborted) return;
      size += chunk.byteLength;
      if (size > MAX_REQUEST_BYTES) {
        aborted = true;
        count(413);
        return answerError(res, 413, "body_too_large", `replay request over ${MAX_REQUEST_BYTES} bytes`, { close: true });
      }
      chunks.push(Buffer.from(chunk.slice(0)));
      if (!isLast) return;
      let request: ReplayRequest;
      try {
        request = replayRequest(Buffer.concat(chunks).toString("utf8"));
      } catch (err) {
        return answerReadFailure(res, err, retryAfterSeconds, count);
      }
      // Replaying writes the stream and reads its dead letters: the key needs both (401, 404, 403, 429, 503).
      const admitted = pipeline.admission.admit(caller, request.stream);
      if (isRefusal(admitted)) {
        count(admitted.status);
        return answerRefusal(res, admitted, false);
      }
      const denied = auth.permitRead(admitted.key, request.stream);
      if (denied) {
        count(403);
        return answerError(res, 403, denied.code, denied.message);
      }
      const down = pipeline.admission.database();
      if (down) {
        count(down.status);
        return answerRefusal(res, down, false);
      }
      const stream = request.stream === LINE_ROUTER ? null : (streams.get(request.stream) ?? null);
      void (async () => {
        let client: Awaited<ReturnType<ReadPool["connect"]>> | null = null;
        try {
          client = await pool.connect();
          if (!(await beginReplay(client, request.stream))) {
            count(409);
            return answerError(
              res,
              409,
              "replay_running",
              `a replay of stream ${request.stream} is under way; send this one when it is done`,
            );
          }
          const { letters, more } = await pendingDeadLetters(client, schema, request.stream, request.selection);
          const tally = await replay(options, admitted.key, stream, letters);
          await endReplay(client, request.stream);
          const status = tally.failure === null ? 200 : 503;
          count(status);
          answerJson(
            res,
            status,
            {
              status: tally.failure === null ? "success" : "error",
              stream: request.stream,
              replayed: tally.replayed,
              accepted: tally.accepted,
              duplicates: tally.duplicates,
              rejected: tally.rejected,
              not_replayed: tally.notReplayed,
              more,
              errors: tally.errors,
              ...(tally.failure === null
                ? {}
                : { message: `database unavailable: ${tally.failure}; ${tally.notReplayed} not replayed, retry later` }),
            },
            status === 503 ? { headers: { "Retry-After": String(retryAfterSeconds) } } : {},
          );
        } catch (err) {
          // The connection goes, and with it the replay lock.
          client?.release(err as Error);
          client = null;
          answerReadFailure(res, err, retryAfterSeconds, count);
        } finally {
          client?.release();
        }
      })();
    });
  });
}

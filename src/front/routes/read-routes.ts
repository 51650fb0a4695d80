/**
 * Reading back (docs/http-api.md#reading-back): `GET /v1/streams/{stream}/records` and
 * `GET /v1/dead-letters`. Keys are checked as for writes (401, 404, then 403 against the key's `read`
 * list); queries run on the read pool, never on a connection ingest uses.
 */
import type { Metrics } from "../../ops/metrics";
import type { Auth } from "../../security/auth";
import { isDenial } from "../../security/auth";
import type { StreamDefinition } from "../../shared/stream-definition";
import { deadLetterQuery, readDeadLetters } from "../../storage/dead-letters";
import { queryParams, ReadQueryError } from "../../storage/read-query";
import { ReadUnavailable, type ReadPool } from "../../storage/read-pool";
import { readRecords, recordQuery, type ReadPage } from "../../storage/record-reads";
import { pathParameter } from "../http-policy";
import { answer, answerError, markClosed } from "../http-responses";
import type { HttpRequest, HttpResponse, TemplatedApp } from "../uws";

/** What every route that reads stored rows needs: the key check, the read pool and where the rows are. */
export interface ReadAccess {
  auth: Auth;
  pool: ReadPool;
  schema: string;
  streams: ReadonlyMap<string, StreamDefinition>;
  metrics: Metrics;
  retryAfterSeconds: number;
}

export interface ReadRoutesOptions extends ReadAccess {
  /** Extra fixed-stream aliases of the records route (`/users` → users). */
  aliases?: ReadonlyArray<{ path: string; stream: string }>;
}

export function pageJson(page: ReadPage): string {
  return `{"records":[${page.records.join(",")}],"next_cursor":${JSON.stringify(page.nextCursor)}}`;
}

/** Answers a read's failure: 400 naming the parameter, 503 when the database or the pool cannot serve it. */
export function answerReadFailure(res: HttpResponse, err: unknown, retryAfterSeconds: number, count: (status: number) => void): void {
  if (err instanceof ReadQueryError) {
    count(400);
    return answerError(res, 400, "bad_query", err.message);
  }
  if (err instanceof ReadUnavailable) {
    count(503);
    return answerError(res, 503, "read_unavailable", err.message, { headers: { "Retry-After": String(retryAfterSeconds) } });
  }
  count(500);
  answerError(res, 500, "read_failed", (err as Error).message);
}

export function registerReadRoutes(app: TemplatedApp, options: ReadRoutesOptions): void {
  const { auth, pool, schema, streams, metrics, retryAfterSeconds } = options;

  const records = (route: string, fixedStream: string | null) => (res: HttpResponse, req: HttpRequest) => {
    res.onAborted(() => markClosed(res));
    const count = (status: number) => metrics.httpRequests.inc({ route, status: String(status) });
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const name = fixedStream ?? pathParameter(req.getParameter(0));
    const query = req.getQuery() ?? "";
    if (isDenial(caller)) {
      count(caller.status);
      return answerError(res, caller.status, caller.code, caller.message, { headers: caller.headers });
    }
    const stream = streams.get(name);
    if (!stream) {
      count(404);
      return answerError(res, 404, "unknown_stream", `unknown stream "${name}"; streams: ${[...streams.keys()].join(", ")}`);
    }
    const denied = auth.permitRead(caller, stream.name);
    if (denied) {
      count(403);
      return answerError(res, 403, denied.code, denied.message);
    }
    let parsed: ReturnType<typeof recordQuery>;
    try {
      parsed = recordQuery(stream, queryParams(query));
    } catch (err) {
      return answerReadFailure(res, err, retryAfterSeconds, count);
    }
    readRecords(pool, schema, stream, parsed.paging, parsed.filters).then(
      (page) => {
        count(200);
        answer(res, 200, pageJson(page));
      },
      (err) => answerReadFailure(res, err, retryAfterSeconds, count),
    );
  };
  app.get("/v1/streams/:stream/records", records("/v1/streams/:stream/records", null));
  for (const alias of options.aliases ?? []) app.get(alias.path, records(alias.path, alias.stream));

  app.get("/v1/dead-letters", (res, req) => {
    res.onAborted(() => markClosed(res));
    const count = (status: number) => metrics.httpRequests.inc({ route: "/v1/dead-letters", status: String(status) });
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    const query = req.getQuery() ?? "";
    if (isDenial(caller)) {
      count(caller.status);
      return answerError(res, caller.status, caller.code, caller.message, { headers: caller.headers });
    }
    let parsed: ReturnType<typeof deadLetterQuery>;
    try {
      parsed = deadLetterQuery(queryParams(query));
    } catch (err) {
      return answerReadFailure(res, err, retryAfterSeconds, count);
    }
    // Dead letters of one stream need that stream in the key's read list; without `stream=` a key sees
    // the dead letters of the streams it may read (a `tpch` dead letter: an unknown line prefix).
    let readable: string[] | null = null;
    if (parsed.stream !== null) {
      const denied = auth.permitRead(caller, parsed.stream);
      if (denied) {
        count(403);
        return answerError(res, 403, denied.code, denied.message);
      }
    } else if (!caller.readAll) {
      readable = [...caller.read];
    }
    readDeadLetters(pool, schema, parsed, readable).then(
      (page) => {
        count(200);
        answer(res, 200, pageJson(page));
      },
      (err) => answerReadFailure(res, err, retryAfterSeconds, count),
    );
  });
}

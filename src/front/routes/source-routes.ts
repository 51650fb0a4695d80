/**
 * `GET /v1/sources` and `POST /v1/sources/{name}/run` (docs/sources.md#http): what each pull source did
 * last and when it runs next; a run on demand. Reading is open like the other operational endpoints (no
 * URL, header or record is shown); running one needs a key that may write the source's stream.
 */
import type { Metrics } from "../../ops/metrics";
import type { SourceConfig } from "../../ops/source-config";
import type { Auth } from "../../security/auth";
import { isDenial } from "../../security/auth";
import type { SourceScheduler } from "../../sources/scheduler";
import { pathParameter } from "../http-policy";
import { answerError, answerJson, markClosed } from "../http-responses";
import type { TemplatedApp } from "../uws";

export interface SourceRoutesOptions {
  scheduler: SourceScheduler | null;
  sources: Readonly<Record<string, SourceConfig>>;
  auth: Auth;
  metrics: Metrics;
  retryAfterSeconds: number;
}

export function registerSourceRoutes(app: TemplatedApp, options: SourceRoutesOptions): void {
  const { scheduler, sources, auth, metrics, retryAfterSeconds } = options;
  const unavailable = (err: Error) => ({
    headers: { "Retry-After": String(retryAfterSeconds) },
    error: { code: "database_unavailable", message: err.message },
  });

  app.get("/v1/sources", (res) => {
    res.onAborted(() => markClosed(res));
    const count = (status: number) => metrics.httpRequests.inc({ route: "/v1/sources", status: String(status) });
    if (scheduler === null) {
      count(200);
      return answerJson(res, 200, { sources: [] });
    }
    scheduler.views().then(
      (views) => {
        count(200);
        answerJson(res, 200, { sources: views });
      },
      (err: Error) => {
        count(503);
        answerError(res, 503, "database_unavailable", `cannot read the sources' state: ${err.message}`, unavailable(err));
      },
    );
  });

  app.post("/v1/sources/:name/run", (res, req) => {
    res.onAborted(() => markClosed(res));
    const count = (status: number) => metrics.httpRequests.inc({ route: "/v1/sources/:name/run", status: String(status) });
    const name = pathParameter(req.getParameter(0));
    const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"));
    if (isDenial(caller)) {
      count(caller.status);
      return answerError(res, caller.status, caller.code, caller.message, { headers: caller.headers });
    }
    const source = sources[name];
    if (scheduler === null || source === undefined) {
      count(404);
      return answerError(
        res,
        404,
        "unknown_source",
        `no source ${JSON.stringify(name)}; sources: ${Object.keys(sources).join(", ") || "(none configured)"}`,
      );
    }
    const denied = auth.permit(caller, source.stream, false);
    if (denied) {
      count(denied.status);
      return answerError(res, denied.status, denied.code, denied.message);
    }
    scheduler.runNow(name).then(
      (result) => {
        if (result.status === "done") {
          count(200);
          return answerJson(res, 200, result.view);
        }
        count(409);
        answerError(res, 409, "source_running", `source ${name} is running now (here or on another daemon); try again when it is done`);
      },
      (err: Error) => {
        count(503);
        answerError(res, 503, "database_unavailable", `cannot run source ${name}: ${err.message}`, unavailable(err));
      },
    );
  });
}

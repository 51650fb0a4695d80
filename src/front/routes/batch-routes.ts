/** `GET /v1/batches/{id}` and its compatible spelling `GET /v1/batch/{id}/status`. */
import type { Metrics } from "../../ops/metrics";
import type { BatchRegistry } from "../../storage/batch-registry";
import { pathParameter } from "../http-policy";
import { answerError, answerJson, markClosed } from "../http-responses";
import type { HttpRequest, HttpResponse, TemplatedApp } from "../uws";

export interface BatchRoutesOptions {
  batches: BatchRegistry;
  metrics: Metrics;
  retryAfterSeconds: number;
}

export function registerBatchRoutes(app: TemplatedApp, options: BatchRoutesOptions): void {
  const { batches, metrics, retryAfterSeconds } = options;
  const handler = (route: string) => (res: HttpResponse, req: HttpRequest) => {
    res.onAborted(() => markClosed(res));
    const id = pathParameter(req.getParameter(0));
    const count = (status: number) => metrics.httpRequests.inc({ route, status: String(status) });
    batches.lookup(id).then(
      (view) => {
        if (view === null) {
          count(404);
          return answerError(res, 404, "unknown_batch", `no batch ${JSON.stringify(id)}`);
        }
        count(200);
        answerJson(res, 200, view);
      },
      (err: Error) => {
        count(503);
        answerError(res, 503, "database_unavailable", `cannot read batch status: ${err.message}`, {
          headers: { "Retry-After": String(retryAfterSeconds) },
        });
      },
    );
  };
  app.get("/v1/batches/:id", handler("/v1/batches/:id"));
  app.get("/v1/batch/:id/status", handler("/v1/batch/:id/status"));
}

/** Operational endpoints: health, stats, Prometheus metrics, HDR latency. */
import type { LatencyRecorder } from "../../ops/latency";
import type { Metrics } from "../../ops/metrics";
import type { Stats } from "../../ops/stats";
import { VERSION } from "../../ops/version";
import type { Database } from "../../storage/database";
import type { Ring } from "../ring";
import type { Admission } from "../submission/admission";
import { answer, answerJson, markClosed } from "../http-responses";
import type { HttpResponse, TemplatedApp } from "../uws";

export interface OpsRoutesOptions {
  db: Database;
  admission: Admission;
  ring: Ring;
  metrics: Metrics;
  latency: LatencyRecorder;
  stats: Stats;
  streamNames: readonly string[];
  /** The line streams' entity names (seed 004's clients read them from /health). */
  entities: readonly string[];
  startedAt: number;
  wsConnections: () => number;
  retryAfterSeconds: number;
}

export function registerOpsRoutes(app: TemplatedApp, options: OpsRoutesOptions): void {
  const { db, admission, ring, metrics, latency, stats, streamNames, entities, startedAt, wsConnections, retryAfterSeconds } = options;
  const count = (route: string, status: number) => metrics.httpRequests.inc({ route, status: String(status) });

  const health = (res: HttpResponse) => {
    res.onAborted(() => markClosed(res));
    void db.probe().then((up) => {
      const status = up && !admission.isLeaving ? 200 : 503;
      count("/health", status);
      answerJson(
        res,
        status,
        {
          status: !up ? "unhealthy" : admission.isLeaving ? "draining" : "healthy",
          database: up ? "connected" : "disconnected",
          streams: streamNames,
          entities,
          version: VERSION,
          uptime_seconds: Math.round((Date.now() - startedAt) / 1000),
          ws_connections: wsConnections(),
          ring: { used_bytes: ring.used, capacity_bytes: ring.capacity },
        },
        status === 503 ? { headers: { "Retry-After": String(retryAfterSeconds) } } : {},
      );
    });
  };
  app.get("/health", health);
  app.get("/v1/health", health);

  const metricsRoute = (res: HttpResponse) => {
    res.onAborted(() => markClosed(res));
    void metrics.registry.metrics().then(
      (text) => {
        count("/metrics", 200);
        answer(res, 200, text, { contentType: metrics.registry.contentType });
      },
      (err: Error) => answerJson(res, 500, { status: "error", message: err.message }),
    );
  };
  app.get("/metrics", metricsRoute);
  app.get("/v1/metrics", metricsRoute);

  const statsRoute = (res: HttpResponse) => {
    res.onAborted(() => markClosed(res));
    count("/stats", 200);
    answerJson(res, 200, stats.report());
  };
  app.get("/stats", statsRoute);
  app.get("/v1/stats", statsRoute);

  app.get("/v1/latency", (res) => {
    res.onAborted(() => markClosed(res));
    count("/v1/latency", 200);
    answerJson(res, 200, latency.report());
  });
}

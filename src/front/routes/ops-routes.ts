/** Operational endpoints: health, stats, Prometheus metrics, HDR latency. */
import type { ServerContext } from "../context";
import { answer, answerJson, markClosed } from "../http-responses";
import type { HttpResponse, TemplatedApp } from "../uws";

export function registerOpsRoutes(app: TemplatedApp, ctx: ServerContext, wsConnections: () => number): void {
  const { metrics } = ctx;
  const count = (route: string, status: number) => metrics.httpRequests.inc({ route, status: String(status) });

  const health = (res: HttpResponse) => {
    res.onAborted(() => markClosed(res));
    void ctx.db.probe().then((up) => {
      const status = up && !ctx.draining ? 200 : 503;
      count("/health", status);
      answerJson(
        res,
        status,
        {
          status: !up ? "unhealthy" : ctx.draining ? "draining" : "healthy",
          database: up ? "connected" : "disconnected",
          streams: [...ctx.streams.keys()],
          version: ctx.version,
          uptime_seconds: Math.round((Date.now() - ctx.startedAt) / 1000),
          ws_connections: wsConnections(),
          ring: { used_bytes: ctx.ring.used, capacity_bytes: ctx.ring.capacity },
        },
        status === 503 ? { headers: { "Retry-After": String(ctx.config.retryAfterSeconds) } } : {},
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

  const stats = (res: HttpResponse) => {
    res.onAborted(() => markClosed(res));
    count("/stats", 200);
    answerJson(res, 200, ctx.dispatcher.stats.report());
  };
  app.get("/stats", stats);
  app.get("/v1/stats", stats);

  app.get("/v1/latency", (res) => {
    res.onAborted(() => markClosed(res));
    count("/v1/latency", 200);
    answerJson(res, 200, ctx.latency.report());
  });
}

/**
 * `GET /docs`: interactive API documentation (Swagger UI, from the swagger-ui-dist package) over this
 * daemon's own `/openapi.json`. Its files are read from node_modules once at start and served from memory,
 * so the page works offline; its Content-Security-Policy keeps it from loading anything from elsewhere
 * (docs/http-api.md#api-documentation).
 */
import fs from "node:fs";
import path from "node:path";
import type { Metrics } from "../../ops/metrics";
import { answer, markClosed } from "../http-responses";
import type { HttpResponse, TemplatedApp } from "../uws";

interface Asset {
  body: Buffer | string;
  contentType: string;
}

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ingestd API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
`;

// validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
const INIT = `window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null });\n`;

/** Same-origin only: the page, its script and style, and the API it documents ("Try it out"). */
const CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'";

function loadAssets(): Map<string, Asset> {
  const dir = path.dirname(require.resolve("swagger-ui-dist/package.json"));
  const file = (name: string) => fs.readFileSync(path.join(dir, name));
  return new Map<string, Asset>([
    ["/docs", { body: PAGE, contentType: "text/html; charset=utf-8" }],
    ["/docs/", { body: PAGE, contentType: "text/html; charset=utf-8" }],
    ["/docs/init.js", { body: INIT, contentType: "text/javascript; charset=utf-8" }],
    ["/docs/swagger-ui-bundle.js", { body: file("swagger-ui-bundle.js"), contentType: "text/javascript; charset=utf-8" }],
    ["/docs/swagger-ui.css", { body: file("swagger-ui.css"), contentType: "text/css; charset=utf-8" }],
  ]);
}

export function registerDocsRoutes(app: TemplatedApp, metrics: Metrics): void {
  const assets = loadAssets();
  for (const [route, asset] of assets) {
    app.get(route, (res: HttpResponse) => {
      res.onAborted(() => markClosed(res));
      metrics.httpRequests.inc({ route: "/docs", status: "200" });
      // The package's files change only with its version, i.e. with a new ingestd build.
      answer(res, 200, asset.body, {
        contentType: asset.contentType,
        headers: { "Content-Security-Policy": CSP, "Cache-Control": "public, max-age=3600" },
      });
    });
  }
}

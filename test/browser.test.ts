/**
 * A real Chromium as the producer: pages served from other loopback origins send events to the daemon by
 * `fetch` (preflighted: it carries a key header), by `navigator.sendBeacon` while the page unloads, and over
 * a WebSocket; the rows are counted in PostgreSQL. A page from an origin not allowed is refused. `/docs`
 * renders the API from the daemon alone, and a screenshot of it is kept.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import type { Browser, Page } from "puppeteer-core" with { "resolution-mode": "import" };
import { useDaemon } from "./fixture";
import { event, post, rawRequest, ROOT, waitFor } from "./harness";
import { envKeys, newKey, tempDir } from "./security-helpers";

const CHROMIUM = "/usr/bin/chromium";
/** What a page's fetch answered, as page.evaluate hands it back. */
interface PageAnswer {
  status: number;
  requestId: string | null;
  body: any;
}

/** Every wait in a page is bounded: a browser that hangs fails the test instead of the run. */
const PAGE_TIMEOUT_MS = 15_000;

let browser: Browser;
let dir: string;
/** Serves the producer pages: one origin allowed by the daemon's configuration, one not. */
let allowedSite: http.Server;
let otherSite: http.Server;
let allowedOrigin: string;
let otherOrigin: string;
const key = newKey("browser", ["events"]);

function startSite(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(`<!doctype html><html><head><title>${req.url}</title></head><body><p>producer page ${req.url}</p></body></html>`);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const originOf = (server: http.Server) => `http://127.0.0.1:${(server.address() as { port: number }).port}`;

async function countIds(prefix: string): Promise<number> {
  const res = await fx.db.query("SELECT count(*)::int AS n FROM events WHERE event_id LIKE $1 || '%'", [prefix]);
  return res.rows[0].n;
}

async function openPage(url: string): Promise<Page> {
  const page = await browser.newPage();
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(PAGE_TIMEOUT_MS);
  await page.goto(url);
  return page;
}

/**
 * A database, two sites on loopback (one allowed by cors.allowedOrigins, one not), a daemon with one API
 * key, and a headless Chromium (puppeteer-core).
 */
const fx = useDaemon({
  env: async () => {
    dir = tempDir("ingestd-browser-");
    allowedSite = await startSite();
    otherSite = await startSite();
    allowedOrigin = originOf(allowedSite);
    otherOrigin = originOf(otherSite);
    const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
    config.cors = { allowedOrigins: [allowedOrigin] };
    const configFile = path.join(dir, "ingestd.json");
    fs.writeFileSync(configFile, JSON.stringify(config));
    return { INGESTD_CONFIG: configFile, INGESTD_API_KEYS: envKeys([key]) };
  },
});

fx.setup(async () => {
  // puppeteer-core is an ES module; this test compiles to CommonJS.
  const { default: puppeteer } = await import("puppeteer-core");
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: PAGE_TIMEOUT_MS,
    protocolTimeout: PAGE_TIMEOUT_MS,
    args: [
      "--no-sandbox",
      "--headless=new",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
      `--user-data-dir=${path.join(dir, "chromium-profile")}`,
    ],
  });
});

fx.teardown(async () => {
  if (browser) {
    const process = browser.process();
    await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]).catch(() => undefined);
    if (process && process.exitCode === null) process.kill("SIGKILL");
  }
  allowedSite?.close();
  otherSite?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe("a page from an allowed origin", () => {
  test("fetch with a key header (preflighted) stores its events and can read the answer, errors included", async () => {
    const page = await openPage(`${allowedOrigin}/fetch`);
    try {
      const result = await page.evaluate(
        async (url: string, token: string, records: string, bad: string) => {
          const send = async (body: string): Promise<PageAnswer> => {
            const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json", "x-api-key": token }, body });
            return { status: res.status, requestId: res.headers.get("x-request-id"), body: await res.json() };
          };
          return { ok: await send(records), refused: await send(bad) };
        },
        `${fx.daemon.base}/v1/streams/events/events`,
        key.token,
        JSON.stringify([event("br-fetch-0"), event("br-fetch-1"), event("br-fetch-2")]),
        JSON.stringify([{ event_id: "br-fetch-bad", service_name: 7 }]),
      );
      assert.equal(result.ok.status, 200, JSON.stringify(result.ok));
      assert.equal(result.ok.body.accepted, 3);
      // Exposed to the page by Access-Control-Expose-Headers.
      assert.match(result.ok.requestId ?? "", /^[0-9a-f-]{36}$/);
      assert.equal(result.refused.status, 422, JSON.stringify(result.refused));
      assert.equal(result.refused.body.rejected, 1);
      assert.equal(await countIds("br-fetch-"), 3);
    } finally {
      await page.close();
    }
  });

  test("navigator.sendBeacon during unload (text/plain, key in the query) stores a JSON array and an NDJSON body", async () => {
    const page = await openPage(`${allowedOrigin}/beacon`);
    try {
      await page.evaluate(
        (url: string, array: string, lines: string) => {
          // The page's globals: this test is compiled without the DOM library.
          const page = globalThis as any;
          page.addEventListener("pagehide", () => {
            page.navigator.sendBeacon(url, array);
            page.navigator.sendBeacon(url, lines);
          });
        },
        `${fx.daemon.base}/v1/streams/events/events?key=${encodeURIComponent(key.token)}`,
        JSON.stringify([event("br-beacon-0"), event("br-beacon-1")]),
        [event("br-beacon-2"), event("br-beacon-3"), event("br-beacon-4")].map((e) => JSON.stringify(e)).join("\n"),
      );
      // Navigating away unloads the page: the beacons leave as it goes.
      await page.goto(`${allowedOrigin}/away`);
      await waitFor("the beacons' rows", async () => (await countIds("br-beacon-")) === 5, PAGE_TIMEOUT_MS);
    } finally {
      await page.close();
    }
  });

  test("a WebSocket (key as ?token=, permessage-deflate as the browser offers it) stores its frames", async () => {
    const page = await openPage(`${allowedOrigin}/ws`);
    try {
      const result = await page.evaluate(
        (url: string, frame: string) =>
          new Promise<{ hello: any; ack: any; extensions: string }>((resolve, reject) => {
            const ws = new WebSocket(url);
            let hello: any = null;
            ws.onmessage = (m) => {
              const msg = JSON.parse(String(m.data));
              if (hello === null) {
                hello = msg;
                ws.send(frame);
              } else {
                resolve({ hello, ack: msg, extensions: ws.extensions });
                ws.close();
              }
            };
            ws.onclose = (e) => reject(new Error(`closed ${e.code} ${e.reason}`));
          }),
        `${fx.daemon.wsBase}/v1/ws?stream=events&token=${encodeURIComponent(key.token)}`,
        [event("br-ws-0"), event("br-ws-1")].map((e) => JSON.stringify(e)).join("\n"),
      );
      assert.equal(result.ack.type, "ack", JSON.stringify(result));
      assert.equal(result.ack.accepted, 2);
      assert.match(result.extensions, /permessage-deflate/);
      assert.equal(await countIds("br-ws-"), 2);
    } finally {
      await page.close();
    }
  });
});

describe("a page from an origin not allowed", () => {
  test("its fetch fails at the preflight (nothing sent, nothing stored) and its WebSocket is refused", async () => {
    const page = await openPage(`${otherOrigin}/intruder`);
    try {
      const result = await page.evaluate(
        async (url: string, wsUrl: string, token: string, records: string) => {
          let fetchError = "";
          try {
            await fetch(url, { method: "POST", headers: { "content-type": "application/json", "x-api-key": token }, body: records });
          } catch (err) {
            fetchError = String(err);
          }
          const wsOutcome = await new Promise<string>((resolve) => {
            const ws = new WebSocket(wsUrl);
            ws.onopen = () => resolve("open");
            ws.onclose = (e) => resolve(`closed ${e.code}`);
          });
          return { fetchError, wsOutcome };
        },
        `${fx.daemon.base}/v1/streams/events/events`,
        `${fx.daemon.wsBase}/v1/ws?stream=events&token=${encodeURIComponent(key.token)}`,
        key.token,
        JSON.stringify([event("br-intruder-0")]),
      );
      assert.match(result.fetchError, /Failed to fetch/);
      assert.equal(result.wsOutcome, "closed 1006");
      assert.equal(await countIds("br-intruder-"), 0);
    } finally {
      await page.close();
    }
  });

  test("what the browser was told: the preflight has no CORS grant, the upgrade is 403", async () => {
    const preflight = await fetch(`${fx.daemon.base}/v1/streams/events/events`, {
      method: "OPTIONS",
      headers: {
        origin: otherOrigin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-api-key",
      },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("access-control-allow-origin"), null);
    assert.equal(preflight.headers.get("vary"), "Origin");
    const upgrade = await rawRequest(
      fx.daemon.port,
      "GET /v1/ws?stream=events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: ${otherOrigin}\r\nAuthorization: Bearer ${key.token}\r\n\r\n`,
    );
    assert.equal(upgrade.status, 403, upgrade.head);
    assert.match(upgrade.body, /origin_not_allowed/);
  });
});

describe("CORS answers to the allowed origin, as sent", () => {
  test("preflights of an ingest and a read route: 204, the origin echoed, methods, headers, max age", async () => {
    for (const [route, method] of [
      ["/v1/streams/events/events", "POST"],
      ["/v1/ingest/batch", "POST"],
      ["/health", "GET"],
      ["/v1/batches/x", "GET"],
    ]) {
      const res = await fetch(`${fx.daemon.base}${route}`, {
        method: "OPTIONS",
        headers: {
          origin: allowedOrigin,
          "access-control-request-method": method,
          "access-control-request-headers": "content-type, x-api-key",
        },
      });
      assert.equal(res.status, 204, route);
      assert.equal(res.headers.get("access-control-allow-origin"), allowedOrigin, route);
      assert.match(res.headers.get("vary") ?? "", /Origin/, route);
      assert.equal(res.headers.get("access-control-allow-methods"), method, route);
      const allowed = (res.headers.get("access-control-allow-headers") ?? "").split(/,\s*/);
      for (const h of ["content-type", "authorization", "x-api-key", "prefer", "x-request-id", "content-encoding"])
        assert.ok(allowed.includes(h), `${route}: ${h}`);
      assert.match(res.headers.get("access-control-max-age") ?? "", /^\d+$/, route);
    }
  });

  test("refusals carry the CORS headers too (a page can read why it was refused)", async () => {
    const res = await post(`${fx.daemon.base}/v1/streams/events/events`, JSON.stringify([event("br-nokey")]), "application/json", {
      origin: allowedOrigin,
    });
    assert.equal(res.status, 401);
    assert.equal(res.headers.get("access-control-allow-origin"), allowedOrigin);
    const missing = await post(`${fx.daemon.base}/nowhere`, "x", "text/plain", { origin: allowedOrigin });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get("access-control-allow-origin"), allowedOrigin);
  });
});

describe("GET /docs", () => {
  test("renders the ingest endpoints from /openapi.json with nothing fetched from elsewhere; a screenshot is kept", async () => {
    const page = await browser.newPage();
    page.setDefaultTimeout(PAGE_TIMEOUT_MS);
    const requested: string[] = [];
    page.on("request", (r) => requested.push(r.url()));
    try {
      const res = await page.goto(`${fx.daemon.base}/docs`, { waitUntil: "networkidle0", timeout: PAGE_TIMEOUT_MS });
      assert.equal(res?.status(), 200);
      await page.waitForSelector(".opblock-summary-path");
      const paths = await page.$$eval(".opblock-summary-path", (els) => els.map((e) => (e.textContent ?? "").replace(/\u200b/g, "")));
      for (const p of ["/v1/streams/events/events", "/v1/ingest/batch", "/v1/ws"])
        assert.ok(paths.includes(p), `${p} in ${paths.join(", ")}`);
      const outside = requested.filter((u) => !u.startsWith(fx.daemon.base) && !u.startsWith("data:"));
      assert.deepEqual(outside, []);
      const shot = path.join(os.tmpdir(), `ingestd-docs-${process.pid}.png`);
      await page.screenshot({ path: shot, fullPage: false });
      assert.ok(fs.statSync(shot).size > 10_000, "a screenshot with something on it");
      console.log(`/docs screenshot: ${shot}`);
    } finally {
      await page.close();
    }
  });

  test("its files are served with their content types", async () => {
    for (const [file, type] of [
      ["/docs", "text/html"],
      ["/docs/swagger-ui.css", "text/css"],
      ["/docs/swagger-ui-bundle.js", "text/javascript"],
    ]) {
      const res = await fetch(`${fx.daemon.base}${file}`);
      assert.equal(res.status, 200, file);
      assert.match(res.headers.get("content-type") ?? "", new RegExp(`^${type}`), file);
      assert.ok((await res.arrayBuffer()).byteLength > 200, file);
    }
  });
});

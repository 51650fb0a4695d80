/**
 * Request ids and trace context against the real daemon: X-Request-ID is echoed (or generated) on every
 * HTTP answer; a refusal's log line carries it with the traceparent's trace and span ids; a successful
 * request writes no log line. Also the default CORS stance: no origins configured, no CORS headers.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { event, get, post, rawRequest, waitFor } from "./harness";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ingestUrl = () => `${fx.daemon.base}/v1/streams/events/events`;

function logLines(): any[] {
  return fx.daemon.output.flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

/** A database, and a daemon with the shipped configuration. */
const fx = useDaemon();

describe("X-Request-ID", () => {
  test("a producer's id is echoed on a stored request, a refusal, a read route and an unknown path", async () => {
    const stored = await post(ingestUrl(), JSON.stringify([event("rid-1")]), "application/json", { "x-request-id": "producer-id-1" });
    assert.equal(stored.status, 200, stored.text);
    assert.equal(stored.headers.get("x-request-id"), "producer-id-1");

    const refused = await post(ingestUrl(), "x", "application/xml", { "x-request-id": "producer-id-2" });
    assert.equal(refused.status, 415);
    assert.equal(refused.headers.get("x-request-id"), "producer-id-2");

    const health = await fetch(`${fx.daemon.base}/health`, { headers: { "x-request-id": "producer-id-3" } });
    assert.equal(health.headers.get("x-request-id"), "producer-id-3");
    await health.text();

    const missing = await fetch(`${fx.daemon.base}/no/such/path`, { headers: { "x-request-id": "producer-id-4" } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get("x-request-id"), "producer-id-4");
    await missing.text();
  });

  test("without one, or with an unusable one (too long, not printable ASCII), a fresh UUID is generated per request", async () => {
    const a = await get(`${fx.daemon.base}/health`);
    const b = await get(`${fx.daemon.base}/health`);
    assert.match(a.headers.get("x-request-id") ?? "", UUID);
    assert.match(b.headers.get("x-request-id") ?? "", UUID);
    assert.notEqual(a.headers.get("x-request-id"), b.headers.get("x-request-id"));

    const long = await post(ingestUrl(), JSON.stringify([event("rid-long")]), "application/json", { "x-request-id": "x".repeat(201) });
    assert.equal(long.status, 200);
    assert.match(long.headers.get("x-request-id") ?? "", UUID);
    const longest = await get(`${fx.daemon.base}/health`).then(() =>
      fetch(`${fx.daemon.base}/health`, { headers: { "x-request-id": "y".repeat(200) } }),
    );
    assert.equal(longest.headers.get("x-request-id"), "y".repeat(200));
    await longest.text();

    // A tab and a Latin-1 byte: allowed in an HTTP header value, not taken as an id.
    const raw = await rawRequest(fx.daemon.port, "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\tb\xe9\r\nConnection: close\r\n\r\n");
    assert.equal(raw.status, 200, raw.head);
    const echoed = /\r\nx-request-id: ([^\r]*)/i.exec(raw.head);
    assert.ok(echoed, raw.head);
    assert.match(echoed[1], UUID);
  });

  test("a WebSocket upgrade refusal echoes it too", async () => {
    const raw = await rawRequest(
      fx.daemon.port,
      "GET /v1/ws?stream=nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Request-ID: ws-upgrade-1\r\n\r\n",
    );
    assert.equal(raw.status, 404, raw.head);
    assert.match(raw.head, /\r\nx-request-id: ws-upgrade-1/i);
  });
});

describe("log lines of refused requests", () => {
  test("a refusal's log line carries the request id and the traceparent's trace_id and span_id", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const spanId = "00f067aa0ba902b7";
    const res = await post(ingestUrl(), "<xml/>", "application/xml", {
      "x-request-id": "traced-1",
      traceparent: `00-${traceId}-${spanId}-01`,
    });
    assert.equal(res.status, 415);
    const line = await waitFor("the refusal's log line", () => logLines().find((l) => l.request_id === "traced-1"));
    assert.equal(line.trace_id, traceId);
    assert.equal(line.span_id, spanId);
    assert.equal(line.status, 415);
    assert.equal(line.error, "unsupported_media_type");
    assert.equal(line.method, "POST");
    assert.equal(line.path, "/v1/streams/events/events");
    assert.equal(line.msg, "request refused");
  });

  test("a malformed traceparent is left out; a body refused after the workers read it is logged too", async () => {
    const res = await post(ingestUrl(), "{not json", "application/json", { "x-request-id": "traced-2", traceparent: "00-zz-yy-01" });
    assert.equal(res.status, 400);
    const line = await waitFor("the refusal's log line", () => logLines().find((l) => l.request_id === "traced-2"));
    assert.equal(line.error, "malformed_body");
    assert.equal(line.trace_id, undefined);
    assert.equal(line.span_id, undefined);
  });

  test("a stored request writes no log line (nothing per request on the hot path)", async () => {
    const res = await post(ingestUrl(), JSON.stringify([event("rid-quiet")]), "application/json", { "x-request-id": "quiet-1" });
    assert.equal(res.status, 200);
    // A refusal sent after it is logged; by then the stored request's line would have been written too.
    await post(ingestUrl(), "x", "application/xml", { "x-request-id": "quiet-marker" });
    await waitFor("the marker's log line", () => logLines().find((l) => l.request_id === "quiet-marker"));
    assert.equal(logLines().filter((l) => l.request_id === "quiet-1").length, 0);
  });
});

describe("CORS when no origin is configured (the default)", () => {
  test("answers carry no CORS headers; OPTIONS answers 204 with Allow and nothing more", async () => {
    const origin = "http://127.0.0.1:9";
    const res = await post(ingestUrl(), JSON.stringify([event("rid-cors")]), "application/json", { origin });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
    const preflight = await fetch(ingestUrl(), {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type, x-api-key" },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("allow"), "POST, OPTIONS");
    assert.equal(preflight.headers.get("access-control-allow-origin"), null);
    assert.equal(preflight.headers.get("access-control-allow-methods"), null);
  });

  test("a WebSocket from a browser page (any Origin) is refused with 403; one without Origin is not", async () => {
    const upgrade = (extra: string) =>
      rawRequest(
        fx.daemon.port,
        "GET /v1/ws?stream=events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`,
        "",
        2000,
      );
    const fromPage = await upgrade("Origin: http://127.0.0.1:9\r\n");
    assert.equal(fromPage.status, 403, fromPage.head);
    assert.match(fromPage.body, /origin_not_allowed/);
    const noOrigin = await upgrade("");
    assert.equal(noOrigin.status, 101, noOrigin.head);
  });
});

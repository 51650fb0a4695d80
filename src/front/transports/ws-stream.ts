/**
 * The WebSocket stream protocol (SPEC §4). Each frame is one batch, numbered implicitly from 1. A frame is
 * acknowledged only after its records are committed, and acks leave in seq order even though frames commit
 * out of order on different workers. WebSocket has no inbound pause, so the `window` of unacknowledged
 * frames is what bounds a producer: a frame past it is a protocol violation.
 */
import { now } from "../../shared/clock";
import { mayWrite, type ApiKey } from "../../security/api-keys";
import { isDenial } from "../../security/auth";
import type { ServerContext } from "../context";
import type { RingRegion } from "../ring";
import type { StreamDefinition } from "../../shared/stream-definition";
import type { TemplatedApp, WebSocket } from "../uws";
import type { IngestOutcome, RecordError } from "../../shared/task-protocol";

export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_MESSAGE_TOO_BIG = 1009;
export const CLOSE_TRY_AGAIN_LATER = 1013;

interface Frame {
  seq: number;
  receivedAt: number;
  ack: string | null;
  outcome: IngestOutcome | null;
}

interface Connection {
  stream: StreamDefinition;
  seq: number;
  /** Unacknowledged frames in seq order; the head is the next ack to send. */
  pending: Frame[];
  open: boolean;
  /** The producer's API key (security); its rate bucket decides when acks may leave. */
  key: ApiKey;
  /** Pending flush of acks held back while the key's rate bucket is in debt. */
  throttle: NodeJS.Timeout | null;
}

/** Delay between resubmissions of a frame while the database is unavailable. */
const DB_RETRY_MS = 250;

export interface WsServer {
  connections(): number;
  /** Acks what is committed, then closes every connection with 1001. */
  shutdown(): Promise<void>;
}

export function registerWebSocket(app: TemplatedApp, ctx: ServerContext): WsServer {
  const { config, ring, dispatcher, metrics } = ctx;
  const window = config.ws.window;
  const maxFrame = config.ws.maxFrameBytes;
  const sockets = new Set<WebSocket<Connection>>();
  /** Bytes of frames held outside the ring while it is full; at most a quarter of the ring's size. */
  let overflowBytes = 0;
  const overflowBudget = Math.max(maxFrame, ring.capacity / 4);
  let idleWaiters: Array<() => void> = [];

  const hello = (c: Connection) =>
    JSON.stringify({ type: "hello", stream: c.stream.name, window, max_frame_bytes: maxFrame });

  function ackFor(frame: Frame, outcome: IngestOutcome): string {
    let accepted = outcome.accepted;
    let rejected = outcome.rejected;
    let errors: RecordError[] = outcome.errors;
    if (outcome.kind === "unparseable" || outcome.kind === "failed") {
      accepted = 0;
      rejected = Math.max(1, outcome.received);
      errors = [{ index: 0, path: "$", expected: "JSON, NDJSON or text lines", message: outcome.message }];
    }
    const ack: Record<string, unknown> = {
      type: "ack",
      seq: frame.seq,
      accepted,
      rejected,
      duplicates: outcome.duplicates,
      errors,
    };
    if (outcome.errorsTruncated) ack.errors_truncated = true;
    return JSON.stringify(ack);
  }

  function flushAcks(ws: WebSocket<Connection>, c: Connection): void {
    if (!c.open) return;
    // Rate limit: while the key is in debt its acks wait (committed, not yet acknowledged); the ack window
    // then stops the producer without a close. On shutdown committed frames are acked regardless.
    if (c.key.bucket !== null && !ctx.draining) {
      if (c.throttle !== null) return;
      const wait = c.key.bucket.waitMs();
      if (wait > 0) {
        c.throttle = setTimeout(() => {
          c.throttle = null;
          flushAcks(ws, c);
        }, wait);
        return;
      }
    }
    let n = 0;
    while (n < c.pending.length && c.pending[n].ack !== null) n++;
    if (n === 0) return;
    const ready = c.pending.splice(0, n);
    ws.cork(() => {
      for (const frame of ready) {
        ws.send(frame.ack!, false);
        metrics.wsFrames.inc({ stream: c.stream.name });
        dispatcher.observeAck(c.stream.name, "ws", frame.receivedAt, frame.outcome);
      }
    });
    if (c.pending.length === 0 && idleWaiters.length > 0) checkIdle();
  }

  function checkIdle(): void {
    for (const ws of sockets) if (ws.getUserData().pending.length > 0) return;
    for (const w of idleWaiters.splice(0)) w();
  }

  function close(ws: WebSocket<Connection>, code: number, reason: string): void {
    const c = ws.getUserData();
    if (!c.open) return;
    c.open = false;
    ws.end(code, reason);
  }

  async function processFrame(ws: WebSocket<Connection>, c: Connection, frame: Frame, region: RingRegion, ringAt: number): Promise<void> {
    for (;;) {
      const outcome = await dispatcher.run({
        stream: c.stream.name,
        // Line-format streams take text lines (SPEC §4); "auto" would read them as NDJSON.
        format: c.stream.formats.includes("json") ? "auto" : "text",
        envelope: false,
        region,
        requestId: `ws-${frame.seq}`,
        priority: 0,
        receivedAt: frame.receivedAt,
        ringAt,
        source: "ws",
        recordBatch: false,
      });
      if (outcome.kind !== "db_unavailable") {
        ring.free(region);
        ctx.auth.charge(c.key, outcome); // rate limit: charged once the frame's event count is known
        frame.outcome = outcome;
        frame.ack = ackFor(frame, outcome);
        flushAcks(ws, c);
        return;
      }
      // Never fake an ack: hold the frame and resubmit until the database is back or the deadline passes.
      // The deadline counts from the frame's arrival: a commit that stalled has already used it up.
      if (!c.open || ctx.draining || now() - frame.receivedAt > config.overloadDeadlineMs) {
        ring.free(region);
        close(ws, CLOSE_TRY_AGAIN_LATER, "database unavailable; resend unacknowledged frames");
        c.pending.length = 0;
        checkIdle();
        return;
      }
      await new Promise((r) => setTimeout(r, DB_RETRY_MS));
    }
  }

  function onFrame(ws: WebSocket<Connection>, message: ArrayBuffer): void {
    const c = ws.getUserData();
    if (!c.open) return;
    const receivedAt = now();
    if (ctx.draining) {
      // Not accepted: it will never be acked, so the producer resends it elsewhere.
      return;
    }
    if (message.byteLength > maxFrame) {
      close(ws, CLOSE_MESSAGE_TOO_BIG, `frame of ${message.byteLength} bytes exceeds max_frame_bytes ${maxFrame}`);
      return;
    }
    if (c.pending.length >= window) {
      close(ws, CLOSE_POLICY_VIOLATION, `more than ${window} unacknowledged frames`);
      return;
    }
    const frame: Frame = { seq: ++c.seq, receivedAt, ack: null, outcome: null };
    c.pending.push(frame);
    const length = message.byteLength;
    if (length === 0) {
      frame.ack = JSON.stringify({
        type: "ack", seq: frame.seq, accepted: 0, rejected: 1, duplicates: 0,
        errors: [{ index: 0, path: "$", expected: "at least one record", message: "empty frame" }],
      });
      flushAcks(ws, c);
      return;
    }
    const region = ring.tryAlloc(length);
    if (region !== null) {
      ring.bytes.set(new Uint8Array(message), region.offset);
      void processFrame(ws, c, frame, region, now());
      return;
    }
    // Ring full: hold a private copy until room appears. Per connection the window bounds these copies;
    // across connections the overflow budget does, past which producers are told to come back later.
    if (overflowBytes + length > overflowBudget) {
      close(ws, CLOSE_TRY_AGAIN_LATER, "ingestd overloaded; resend unacknowledged frames");
      return;
    }
    overflowBytes += length;
    const copy = Buffer.from(new Uint8Array(message));
    void ring.alloc(length, 0, config.overloadDeadlineMs).then((r) => {
      overflowBytes -= length;
      if (r === null) {
        close(ws, CLOSE_TRY_AGAIN_LATER, "ingestd overloaded; resend unacknowledged frames");
        return;
      }
      if (!c.open) return ring.free(r);
      ring.bytes.set(copy, r.offset);
      void processFrame(ws, c, frame, r, now());
    });
  }

  // Security: after a SIGHUP reload, live connections take their key's new limits; a revoked key, or one
  // that may no longer write the stream, is cut off (1008). Its unacknowledged frames may be resent.
  ctx.auth.onReload(() => {
    for (const ws of [...sockets]) {
      const c = ws.getUserData();
      const key = ctx.auth.keys.current(c.key);
      if (key === null || !mayWrite(key, c.stream.name)) close(ws, CLOSE_POLICY_VIOLATION, "API key revoked or no longer allowed on this stream");
      else c.key = key;
    }
  });

  app.ws<Connection>("/v1/ws", {
    // uWS drops a connection whose frame exceeds maxPayloadLength without a close frame (1006). Taking
    // frames up to twice the limit lets an oversized frame get its proper 1009; beyond that it is 1006.
    maxPayloadLength: maxFrame * 2,
    idleTimeout: config.ws.idleTimeoutSeconds,
    // Acks are small; a producer that stops reading them is cut off rather than buffered without bound.
    maxBackpressure: 1024 * 1024,
    closeOnBackpressureLimit: 1,
    sendPingsAutomatically: true,
    upgrade: (res, req, context) => {
      const name = req.getQuery("stream") ?? "";
      const key = req.getHeader("sec-websocket-key");
      const protocol = req.getHeader("sec-websocket-protocol");
      const extensions = req.getHeader("sec-websocket-extensions");
      // Security: key from Authorization / X-API-Key, or ?token= (browsers cannot set upgrade headers).
      const caller = ctx.auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"), req.getQuery("token") ?? "");
      const stream = ctx.streams.get(name);
      let refusal: [string, string, Record<string, string>?] | null = null;
      // uWS routes here on a 24-character Sec-WebSocket-Key alone; RFC 6455 §4.2.1 asks for the rest too.
      if (!/^websocket$/i.test(req.getHeader("upgrade").trim()) || !/(^|,)\s*upgrade\s*(,|$)/i.test(req.getHeader("connection"))) {
        refusal = ["400 Bad Request", "not a WebSocket upgrade: Upgrade: websocket and Connection: Upgrade are required"];
      } else if (req.getHeader("sec-websocket-version") !== "13") {
        refusal = ["426 Upgrade Required", "unsupported WebSocket version; this server speaks version 13", { "Sec-WebSocket-Version": "13" }];
      } else if (isDenial(caller)) refusal = ["401 Unauthorized", caller.message, caller.headers];
      else if (!stream) refusal = ["404 Not Found", `unknown stream "${name}"; use /v1/ws?stream=<name>`];
      else if (!mayWrite(caller, stream.name)) refusal = ["403 Forbidden", `API key ${caller.id} may not write stream ${stream.name}`];
      else if (ctx.draining) refusal = ["503 Service Unavailable", "ingestd is shutting down"];
      if (refusal) {
        res.cork(() => {
          res.writeStatus(refusal![0]).writeHeader("Content-Type", "application/json");
          for (const [k, v] of Object.entries(refusal![2] ?? {})) res.writeHeader(k, v);
          res.end(JSON.stringify({ status: "error", message: refusal![1] }), true);
        });
        return;
      }
      const conn: Connection = { stream: stream!, seq: 0, pending: [], open: true, key: caller as ApiKey, throttle: null };
      res.upgrade(conn, key, protocol, extensions, context);
    },
    open: (ws) => {
      sockets.add(ws);
      ws.send(hello(ws.getUserData()), false);
    },
    message: (ws, message) => onFrame(ws, message),
    close: (ws) => {
      const c = ws.getUserData();
      c.open = false;
      if (c.throttle !== null) clearTimeout(c.throttle);
      sockets.delete(ws);
      c.pending.length = 0;
      checkIdle();
    },
  });

  return {
    connections: () => sockets.size,
    async shutdown() {
      // Acks held back by rate limits go out now (ctx.draining is set): their frames are committed.
      for (const ws of sockets) {
        const c = ws.getUserData();
        if (c.throttle !== null) clearTimeout(c.throttle);
        c.throttle = null;
        flushAcks(ws, c);
      }
      await new Promise<void>((resolve) => {
        idleWaiters.push(resolve);
        checkIdle();
      });
      for (const ws of [...sockets]) close(ws, CLOSE_GOING_AWAY, "ingestd shutting down");
      idleWaiters = [];
    },
  };
}

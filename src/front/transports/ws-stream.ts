/**
 * The WebSocket stream protocol (docs/websocket-protocol.md): a thin adapter over the submission owners.
 * Each frame is one batch, numbered implicitly from 1. A frame is acknowledged only after its records are
 * committed, and acks leave in seq order even though frames commit out of order on different workers.
 * WebSocket has no inbound pause, so the `window` of unacknowledged frames is what bounds a producer: a
 * frame past it is a protocol violation.
 */
import { now } from "../../shared/clock";
import { LINE_ROUTER, type StreamDefinition } from "../../shared/stream-definition";
import type { IngestOutcome } from "../../shared/task-protocol";
import { mayWrite, type ApiKey } from "../../security/api-keys";
import type { Denial } from "../../security/auth";
import type { RingRegion } from "../ring";
import { statusLine } from "../http-responses";
import { isRefusal, type Admitted, type Refusal } from "../submission/admission";
import { emptyFrameAck, wsAck } from "../submission/answers";
import type { Pipeline } from "../submission/pipeline";
import type { HttpRequest, TemplatedApp, WebSocket } from "../uws";

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
  stream: Pick<StreamDefinition, "name" | "formats">;
  seq: number;
  /** Unacknowledged frames in seq order; the head is the next ack to send. */
  pending: Frame[];
  open: boolean;
  /** The producer's API key (security); its rate bucket decides when acks may leave. */
  key: ApiKey;
  /** Pending flush of acks held back while the key's rate bucket is in debt. */
  throttle: NodeJS.Timeout | null;
}

export interface WsServer {
  connections(): number;
  /** Acks what is committed, then closes every connection with 1001. */
  shutdown(): Promise<void>;
}

export interface WsSettings {
  /** Unacknowledged frames a producer may have. */
  window: number;
  maxFrameBytes: number;
  idleTimeoutSeconds: number;
}

export function registerWebSocket(app: TemplatedApp, pipeline: Pipeline, settings: WsSettings): WsServer {
  const { auth, admission, ring, submitter, telemetry, metrics, limits } = pipeline;
  const window = settings.window;
  const maxFrame = settings.maxFrameBytes;
  const sockets = new Set<WebSocket<Connection>>();
  /** Bytes of frames held outside the ring while it is full; at most a quarter of the ring's size. */
  let overflowBytes = 0;
  const overflowBudget = Math.max(maxFrame, ring.capacity / 4);
  let idleWaiters: Array<() => void> = [];

  const hello = (c: Connection) => JSON.stringify({ type: "hello", stream: c.stream.name, window, max_frame_bytes: maxFrame });

  function flushAcks(ws: WebSocket<Connection>, c: Connection): void {
    if (!c.open) return;
    // Rate limit: while the key is in debt its acks wait (committed, not yet acknowledged); the ack window
    // then stops the producer without a close. On shutdown committed frames are acked regardless.
    if (c.key.bucket !== null && !admission.isDraining) {
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
        telemetry.acknowledged(c.stream.name, "ws", frame.receivedAt, frame.outcome);
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
    const outcome = await submitter.commit(
      {
        stream: c.stream.name,
        // Line-format streams take text lines; "auto" would read them as NDJSON.
        format: c.stream.formats.includes("json") ? "auto" : "text",
        envelope: false,
        region,
        requestId: `ws-${frame.seq}`,
        priority: 0,
        receivedAt: frame.receivedAt,
        ringAt,
        source: "ws",
        recordBatch: false,
      },
      c.key,
      // Never a faked ack: while the database is down the frame is held and resubmitted, until the deadline
      // counted from its arrival (a commit that stalled has already used it up).
      { retryUntil: frame.receivedAt + limits.overloadDeadlineMs, wanted: () => c.open && !admission.isDraining },
    );
    if (outcome.kind === "db_unavailable") {
      close(ws, CLOSE_TRY_AGAIN_LATER, "database unavailable; resend unacknowledged frames");
      c.pending.length = 0;
      checkIdle();
      return;
    }
    frame.outcome = outcome;
    frame.ack = wsAck(frame.seq, outcome);
    flushAcks(ws, c);
  }

  function onFrame(ws: WebSocket<Connection>, message: ArrayBuffer): void {
    const c = ws.getUserData();
    if (!c.open) return;
    const receivedAt = now();
    if (admission.isDraining) {
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
      frame.ack = emptyFrameAck(frame.seq);
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
    void ring.alloc(length, 0, limits.overloadDeadlineMs).then((r) => {
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
  auth.onReload(() => {
    for (const ws of [...sockets]) {
      const c = ws.getUserData();
      const key = auth.keys.current(c.key);
      if (key === null || !mayWrite(key, c.stream.name))
        close(ws, CLOSE_POLICY_VIOLATION, "API key revoked or no longer allowed on this stream");
      else c.key = key;
    }
  });

  /** The upgrade's own checks, then admission (no 429: rate limits slow a stream by delaying its acks). */
  function admitUpgrade(req: HttpRequest, caller: ApiKey | Denial, name: string): Admitted | Refusal {
    // uWS routes here on a 24-character Sec-WebSocket-Key alone; RFC 6455 §4.2.1 asks for the rest too.
    if (!/^websocket$/i.test(req.getHeader("upgrade").trim()) || !/(^|,)\s*upgrade\s*(,|$)/i.test(req.getHeader("connection"))) {
      return {
        status: 400,
        code: "bad_request",
        message: "not a WebSocket upgrade: Upgrade: websocket and Connection: Upgrade are required",
      };
    }
    if (req.getHeader("sec-websocket-version") !== "13") {
      return {
        status: 426,
        code: "upgrade_required",
        message: "unsupported WebSocket version; this server speaks version 13",
        headers: { "Sec-WebSocket-Version": "13" },
      };
    }
    // Mixed TPC-H lines are an HTTP-only stream: their frames would need the line endpoints' answers.
    const admitted = name === LINE_ROUTER ? null : admission.admit(caller, name, false);
    if (admitted === null || (isRefusal(admitted) && admitted.status === 404)) {
      return { status: 404, code: "unknown_stream", message: `unknown stream "${name}"; use /v1/ws?stream=<name>` };
    }
    return admitted;
  }

  app.ws<Connection>("/v1/ws", {
    // uWS drops a connection whose frame exceeds maxPayloadLength without a close frame (1006). Taking
    // frames up to twice the limit lets an oversized frame get its proper 1009; beyond that it is 1006.
    maxPayloadLength: maxFrame * 2,
    idleTimeout: settings.idleTimeoutSeconds,
    // Acks are small; a producer that stops reading them is cut off rather than buffered without bound.
    maxBackpressure: 1024 * 1024,
    closeOnBackpressureLimit: 1,
    sendPingsAutomatically: true,
    upgrade: (res, req, context) => {
      const name = req.getQuery("stream") ?? "";
      const key = req.getHeader("sec-websocket-key");
      const protocol = req.getHeader("sec-websocket-protocol");
      const extensions = req.getHeader("sec-websocket-extensions");
      // The key from Authorization / X-API-Key, or ?token= (browsers cannot set upgrade headers).
      const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"), req.getQuery("token") ?? "");
      const admitted = admitUpgrade(req, caller, name);
      if (isRefusal(admitted)) {
        res.cork(() => {
          res.writeStatus(statusLine(admitted.status)).writeHeader("Content-Type", "application/json");
          for (const [k, v] of Object.entries(admitted.headers ?? {})) res.writeHeader(k, v);
          res.end(JSON.stringify({ status: "error", message: admitted.message }), true);
        });
        return;
      }
      const conn: Connection = { stream: admitted.stream, seq: 0, pending: [], open: true, key: admitted.key, throttle: null };
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
      // Acks held back by rate limits go out now (admission is draining): their frames are committed.
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

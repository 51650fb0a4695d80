/**
 * The WebSocket stream protocol (docs/websocket-protocol.md): a thin adapter over the submission owners.
 * Each frame is one batch, numbered implicitly from 1. A frame is acknowledged only after its records are
 * committed, and acks leave in seq order even though frames commit out of order on different workers.
 * WebSocket has no inbound pause, so the `window` of unacknowledged frames is what bounds a producer: a
 * frame past it is a protocol violation. With `&producer=` the connection is a producer session: frames are
 * numbered on from the producer's committed seq and committed in seq order (sessions/).
 */
import { now } from "../../shared/clock";
import { LINE_ROUTER, type StreamDefinition } from "../../shared/stream-definition";
import type { IngestOutcome } from "../../shared/task-protocol";
import { mayWrite, type ApiKey } from "../../security/api-keys";
import type { Denial } from "../../security/auth";
import type { RingRegion } from "../ring";
import type { HttpPolicy } from "../http-policy";
import { answerRefusal } from "../http-responses";
import { isRefusal, type Admitted, type Refusal } from "../submission/admission";
import { emptyFrameAck, wsAck } from "../submission/answers";
import type { Pipeline } from "../submission/pipeline";
import { CLOSE_SUPERSEDED, producerIdError, type ProducerSessions } from "../sessions/producer-sessions";
import { SessionChain, type ChainFrame } from "../sessions/session-chain";
import { uws, type HttpRequest, type TemplatedApp, type WebSocket } from "../uws";

export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_MESSAGE_TOO_BIG = 1009;
export const CLOSE_INTERNAL_ERROR = 1011;
export const CLOSE_TRY_AGAIN_LATER = 1013;

interface Frame {
  seq: number;
  receivedAt: number;
  ack: string | null;
  outcome: IngestOutcome | null;
  /** Zero bytes: answered with the empty-frame ack. */
  empty: boolean;
}

/** A producer session's state on its connection. */
interface Session {
  producer: string;
  epoch: number;
  committedSeq: number;
  chain: SessionChain<Frame> | null;
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
  session: Session | null;
  /** A producer session asked for and not yet fenced: no frame is taken before its hello. */
  opening: string | null;
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

export function registerWebSocket(
  app: TemplatedApp,
  pipeline: Pipeline,
  settings: WsSettings,
  http: HttpPolicy,
  sessions: ProducerSessions,
): WsServer {
  const { auth, admission, ring, submitter, telemetry, metrics, limits } = pipeline;
  const window = settings.window;
  const maxFrame = settings.maxFrameBytes;
  const sockets = new Set<WebSocket<Connection>>();
  /** Bytes of frames held outside the ring while it is full; at most a quarter of the ring's size. */
  let overflowBytes = 0;
  const overflowBudget = Math.max(maxFrame, ring.capacity / 4);
  let idleWaiters: Array<() => void> = [];

  const hello = (c: Connection) =>
    c.session === null
      ? JSON.stringify({ type: "hello", stream: c.stream.name, window, max_frame_bytes: maxFrame })
      : JSON.stringify({
          type: "hello",
          stream: c.stream.name,
          window,
          max_frame_bytes: maxFrame,
          producer: c.session.producer,
          committed_seq: c.session.committedSeq,
        });

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
        // permessage-deflate frames arrive inflated by uWS.
        encoding: "identity",
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

  /** A session frame's final outcome (in seq order): its ack, or the close that makes the producer resynchronise. */
  function settleSessionFrame(ws: WebSocket<Connection>, c: Connection, frame: Frame, outcome: IngestOutcome): void {
    if (!c.open) return;
    if (outcome.kind === "superseded") return supersede(ws);
    if (outcome.kind === "db_unavailable" || outcome.kind === "failed") {
      const [code, reason] =
        outcome.kind === "failed"
          ? [CLOSE_INTERNAL_ERROR, "frame not committed; reconnect and resend from committed_seq"]
          : [CLOSE_TRY_AGAIN_LATER, "database unavailable; reconnect and resend from committed_seq"];
      close(ws, code, reason);
      c.pending.length = 0;
      checkIdle();
      return;
    }
    frame.outcome = outcome;
    frame.ack = frame.empty ? emptyFrameAck(frame.seq) : wsAck(frame.seq, outcome);
    flushAcks(ws, c);
  }

  function supersede(ws: WebSocket<Connection>): void {
    const c = ws.getUserData();
    close(ws, CLOSE_SUPERSEDED, "superseded");
    c.pending.length = 0;
    checkIdle();
  }

  function onFrame(ws: WebSocket<Connection>, message: ArrayBuffer): void {
    const c = ws.getUserData();
    if (!c.open) return;
    const receivedAt = now();
    if (admission.isDraining) {
      // Not accepted: it will never be acked, so the producer resends it elsewhere.
      return;
    }
    if (c.opening !== null) {
      close(ws, CLOSE_POLICY_VIOLATION, "frame before the hello: wait for it, it names committed_seq");
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
    const length = message.byteLength;
    const frame: Frame = { seq: ++c.seq, receivedAt, ack: null, outcome: null, empty: length === 0 };
    c.pending.push(frame);
    const chain = c.session?.chain ?? null;
    if (chain !== null) return onSessionFrame(ws, c, chain, frame, message);
    if (length === 0) {
      frame.ack = emptyFrameAck(frame.seq);
      flushAcks(ws, c);
      return;
    }
    const region = copyIntoRing(ws, c, message, resumeFrame, frame);
    if (region !== null) void processFrame(ws, c, frame, region, now());
  }

  /** A frame that waited for ring space goes on as if it had found it at once. */
  function resumeFrame(ws: WebSocket<Connection>, c: Connection, frame: Frame, region: RingRegion): void {
    void processFrame(ws, c, frame, region, now());
  }

  /**
   * The frame's bytes in the ring: the region at once when there is room; otherwise null, and a private
   * copy waits for room (per connection the window bounds these copies, across connections the overflow
   * budget, past which producers are told to come back later: 1013), then `resume` gets the region. Taking
   * the item and a plain function rather than a closure keeps the common case free of allocations.
   */
  function copyIntoRing<T>(
    ws: WebSocket<Connection>,
    c: Connection,
    message: ArrayBuffer,
    resume: (ws: WebSocket<Connection>, c: Connection, item: T, region: RingRegion) => void,
    item: T,
  ): RingRegion | null {
    const length = message.byteLength;
    const region = ring.tryAlloc(length);
    if (region !== null) {
      ring.bytes.set(new Uint8Array(message), region.offset);
      return region;
    }
    if (overflowBytes + length > overflowBudget) {
      close(ws, CLOSE_TRY_AGAIN_LATER, "ingestd overloaded; resend unacknowledged frames");
      return null;
    }
    overflowBytes += length;
    const copy = Buffer.from(new Uint8Array(message));
    void ring.alloc(length, 0, limits.overloadDeadlineMs).then((r) => {
      overflowBytes -= length;
      if (r === null) {
        close(ws, CLOSE_TRY_AGAIN_LATER, "ingestd overloaded; resend unacknowledged frames");
        return;
      }
      if (!c.open) {
        ring.free(r);
        return;
      }
      ring.bytes.set(copy, r.offset);
      resume(ws, c, item, r);
    });
    return null;
  }

  /** A session frame takes its place in the session's chain at once, and is submitted once in the ring. */
  function onSessionFrame(ws: WebSocket<Connection>, c: Connection, chain: SessionChain<Frame>, frame: Frame, message: ArrayBuffer): void {
    const slot: ChainFrame<Frame> = chain.add(frame.seq, frame.receivedAt, frame);
    if (message.byteLength === 0) return chain.ready(slot, null, now());
    const region = copyIntoRing(ws, c, message, resumeSessionFrame, slot);
    if (region !== null) chain.ready(slot, region, now());
  }

  function resumeSessionFrame(_ws: WebSocket<Connection>, c: Connection, slot: ChainFrame<Frame>, region: RingRegion): void {
    c.session?.chain?.ready(slot, region, now());
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
  function admitUpgrade(req: HttpRequest, caller: ApiKey | Denial, name: string, producer: string | undefined): Admitted | Refusal {
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
    // A page from any site its browser shows could otherwise open a stream with a key it holds or guesses.
    const origin = req.getHeader("origin");
    if (!http.allowsUpgrade(origin)) {
      return {
        status: 403,
        code: "origin_not_allowed",
        message: `WebSocket from origin ${JSON.stringify(origin)} not allowed (cors.allowedOrigins)`,
      };
    }
    if (producer !== undefined) {
      const bad = producerIdError(producer);
      if (bad !== null) return { status: 400, code: "bad_request", message: bad };
    }
    // Mixed TPC-H lines only in a producer session: its frames commit in order, so an order's line items
    // never commit before it (plain frames commit out of order on different workers).
    if (name === LINE_ROUTER && producer === undefined) {
      return {
        status: 400,
        code: "bad_request",
        message: `stream "${name}" takes mixed TPC-H lines only in a producer session: /v1/ws?stream=${name}&producer=<id>`,
      };
    }
    const admitted = admission.admit(caller, name, false);
    if (isRefusal(admitted) && admitted.status === 404) {
      return { status: 404, code: "unknown_stream", message: `unknown stream "${name}"; use /v1/ws?stream=<name>` };
    }
    return admitted;
  }

  /** The fence is done: the session's socket is registered, its frames get a chain, and the hello goes out. */
  function startSession(ws: WebSocket<Connection>, c: Connection, session: Session): void {
    const stream = c.stream.name;
    if (!sessions.attach(stream, session.producer, session.epoch, () => supersede(ws))) {
      close(ws, CLOSE_SUPERSEDED, "superseded");
      return;
    }
    session.chain = new SessionChain<Frame>(
      submitter,
      ring,
      {
        stream,
        format: c.stream.formats.includes("json") ? "auto" : "text",
        producer: session.producer,
        epoch: session.epoch,
        source: "ws",
      },
      () => c.key,
      limits.overloadDeadlineMs,
      (frame, outcome) => settleSessionFrame(ws, c, frame, outcome),
    );
    ws.cork(() => ws.send(hello(c), false));
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
    // permessage-deflate when the producer asks: frames arrive inflated (still bounded by maxPayloadLength);
    // acks go uncompressed (send's compress flag is never set), sparing the front thread a deflate per ack.
    compression: uws.SHARED_COMPRESSOR | uws.SHARED_DECOMPRESSOR,
    upgrade: (res, req, context) => {
      http.begin(res, req);
      const name = req.getQuery("stream") ?? "";
      const key = req.getHeader("sec-websocket-key");
      const protocol = req.getHeader("sec-websocket-protocol");
      const extensions = req.getHeader("sec-websocket-extensions");
      // The key from Authorization / X-API-Key, or ?token= (browsers cannot set upgrade headers).
      const caller = auth.authenticate(req.getHeader("authorization"), req.getHeader("x-api-key"), req.getQuery("token") ?? "");
      const producer = req.getQuery("producer");
      const admitted = admitUpgrade(req, caller, name, producer);
      const refuse = (refusal: Refusal) => answerRefusal(res, refusal, true);
      if (isRefusal(admitted)) {
        refuse(admitted);
        return;
      }
      const conn: Connection = {
        stream: admitted.stream,
        seq: 0,
        pending: [],
        open: true,
        key: admitted.key,
        throttle: null,
        session: null,
        opening: null,
      };
      if (producer !== undefined) {
        // A producer session: refused at once while PostgreSQL is known to be down; fenced once open.
        const down = admission.database();
        if (down !== null) {
          refuse(down);
          return;
        }
        conn.opening = producer;
      }
      // Always upgraded synchronously: uWS 20.30 can drop a socket upgraded later from a corked callback
      // right after its open handler (docs/websocket-protocol.md#producer-sessions), so a session is
      // fenced after the upgrade and its hello waits for the fence.
      res.upgrade(conn, key, protocol, extensions, context);
    },
    open: (ws) => {
      sockets.add(ws);
      const c = ws.getUserData();
      const producer = c.opening;
      if (producer === null) {
        ws.send(hello(c), false);
        return;
      }
      // Every older session of this producer is fenced before the hello names committed_seq.
      sessions.open(c.stream.name, producer).then(
        (opened) => {
          if (!c.open) return; // The older sessions stay fenced; the producer reconnects and fences again.
          c.opening = null;
          c.seq = opened.committedSeq;
          c.session = { producer, epoch: opened.epoch, committedSeq: opened.committedSeq, chain: null };
          startSession(ws, c, c.session);
        },
        () => close(ws, CLOSE_TRY_AGAIN_LATER, "database unavailable; cannot open the producer session, retry later"),
      );
    },
    message: (ws, message) => onFrame(ws, message),
    close: (ws) => {
      const c = ws.getUserData();
      c.open = false;
      if (c.throttle !== null) clearTimeout(c.throttle);
      sockets.delete(ws);
      if (c.session !== null) {
        c.session.chain?.stop();
        sessions.detach(c.stream.name, c.session.producer, c.session.epoch);
      }
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

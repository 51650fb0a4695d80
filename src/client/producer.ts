/**
 * The producer client (README "Producer client", docs/websocket-protocol.md#producer-sessions): opens a
 * producer session on a stream, batches records into frames by count, bytes and linger time, keeps the
 * server's window full, and settles each record once its frame is committed. It reconnects by itself and
 * resends exactly the frames above the session's committed_seq, so every record is stored once.
 *
 * Runs in Node.js (the `ws` package) and in browsers (the global WebSocket; no spool, no Retry-After: a
 * browser does not show a refused upgrade's answer). Imports nothing of the daemon but src/shared.
 */
import type { RecordError } from "../shared/task-protocol";
import type { Spool, SpoolFsync } from "./spool";

export type RecordOutcome =
  | { status: "accepted" }
  | { status: "duplicate" }
  | { status: "rejected"; errors: RecordError[] }
  /** Stored, or a duplicate of a stored record: the frame held both kinds, or its ack was lost and an earlier connection committed it. */
  | { status: "committed" };

export interface ProducerOptions {
  /** The daemon's base URL, `ws://host:port` or `wss://…` (a path is kept; `/v1/ws` is appended). */
  url: string;
  stream: string;
  /** Producer id, 1..128 characters of [A-Za-z0-9._:@-]; default a random one (no resume across processes). */
  producer?: string;
  /** API key: `Authorization: Bearer` in Node.js, `?token=` in browsers. */
  key?: string;
  /** Records are JSON values (NDJSON frames), or text lines for line streams. Default "json". */
  format?: "json" | "text";
  /** Records per frame at most. Default 500. */
  maxBatchRecords?: number;
  /** Bytes per frame at most (also capped by the server's max_frame_bytes). Default 256 KiB. */
  maxBatchBytes?: number;
  /** How long a partial frame waits for more records. Default 5 ms. */
  lingerMs?: number;
  /** Records taken in and not yet in a frame, at most; `send` waits beyond. Default 50,000. */
  maxBufferedRecords?: number;
  /** Spool directory (Node.js): frames are kept there until acknowledged, across process restarts. */
  spoolDir?: string;
  /** Unacknowledged frame bytes the spool may hold; no new frame is built beyond. Default 256 MiB. */
  spoolMaxBytes?: number;
  /** "frame" (default): each frame is fsynced before it is sent. */
  spoolFsync?: SpoolFsync;
  /** Reconnect delays: exponential from `initialDelayMs` to `maxDelayMs`, with full jitter. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /**
   * A connection with frames out and no word from the server for this long is dropped and opened again (a
   * peer gone without a close; the server delays acks at most its overload deadline). Default 60 s.
   */
  silenceTimeoutMs?: number;
  /** Give up (every waiting record rejects) after this long without a session; default never. */
  giveUpAfterMs?: number;
  /** Connection events, for progress lines and logs. */
  onEvent?: (event: ProducerEvent) => void;
}

export type ProducerEvent =
  | { type: "connected"; committedSeq: number; resent: number }
  | { type: "disconnected"; code: number; reason: string; retryInMs: number };

/** Thrown into every waiting record when the producer cannot go on: superseded, refused, or closed. */
export class ProducerError extends Error {
  constructor(
    message: string,
    /** HTTP status of a refused upgrade, or the WebSocket close code. */
    readonly code: number,
  ) {
    super(message);
    this.name = "ProducerError";
  }
}

interface Waiting {
  text: string;
  bytes: number;
  resolve: (o: RecordOutcome) => void;
  reject: (e: Error) => void;
}

interface OutFrame {
  seq: number;
  text: string;
  bytes: number;
  /** One per record, in frame order; null for frames read back from the spool (nobody waits for them). */
  records: Waiting[] | null;
  count: number;
  /** Spooled (when there is a spool): may be sent. */
  durable: Promise<void>;
}

/** The fields of the socket this client uses: `ws` in Node.js and the browser's WebSocket both have them. */
interface Socket {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

const OPEN = 1;
const CLOSE_SUPERSEDED = 4409;
const CLOSE_TRY_AGAIN_LATER = 1013;

export class Producer {
  readonly producer: string;
  private readonly o: Required<Omit<ProducerOptions, "producer" | "key" | "spoolDir" | "onEvent">> &
    Pick<ProducerOptions, "key" | "spoolDir" | "onEvent">;
  private buffer: Waiting[] = [];
  private bufferBytes = 0;
  /** Frames built and not acknowledged, in seq order. */
  private unacked: OutFrame[] = [];
  /** Of `unacked`, how many were sent on the current connection. */
  private sent = 0;
  private socket: Socket | null = null;
  private connected = false;
  private window = 1;
  private maxFrame = 0;
  private nextSeq = 1;
  private linger: ReturnType<typeof setTimeout> | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private attempts = 0;
  private retryAfterMs = 0;
  private spool: Spool | null = null;
  private ready: Promise<void>;
  private roomWaiters: Array<() => void> = [];
  private idleWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private failure: ProducerError | null = null;
  private closing = false;
  /** Date.now() since when there is no session (null while connected). */
  private downSince: number | null = null;
  /** Date.now() of the last message from the server. */
  private heardAt = 0;
  private watchdog: ReturnType<typeof setInterval> | null = null;

  constructor(options: ProducerOptions) {
    this.producer = options.producer ?? `p-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
    this.o = {
      format: "json",
      maxBatchRecords: 500,
      maxBatchBytes: 256 * 1024,
      lingerMs: 5,
      maxBufferedRecords: 50_000,
      spoolMaxBytes: 256 * 1024 * 1024,
      spoolFsync: "frame",
      initialDelayMs: 100,
      maxDelayMs: 10_000,
      giveUpAfterMs: Infinity,
      silenceTimeoutMs: 60_000,
      ...options,
    };
    this.ready = this.start();
    this.ready.catch((err: Error) => this.fail(new ProducerError(`cannot open the spool: ${err.message}`, 0)));
  }

  /** Records waiting for their frame's ack, plus those not yet in a frame. */
  get pendingRecords(): number {
    let n = this.buffer.length;
    for (const f of this.unacked) n += f.count;
    return n;
  }

  /** Sends a record; resolves with its outcome once committed. Waits first while the buffer is full. */
  async send(record: unknown): Promise<RecordOutcome> {
    const { outcome } = await this.enqueue(record);
    return outcome;
  }

  /**
   * Takes a record in, waiting while the buffer (or spool) is full, and resolves as soon as it is buffered;
   * `outcome` settles once it is committed. Lets a loop keep many records in flight with bounded memory.
   */
  async enqueue(record: unknown): Promise<{ outcome: Promise<RecordOutcome> }> {
    if (this.closing) throw new ProducerError("producer is closed", 0);
    while (this.buffer.length >= this.o.maxBufferedRecords && this.failure === null)
      await new Promise<void>((r) => this.roomWaiters.push(r));
    if (this.failure !== null) throw this.failure;
    let text: string;
    if (this.o.format === "text") {
      if (typeof record !== "string")
        return { outcome: Promise.resolve(localRejection("a string (one text line)", "record is not a string")) };
      if (record.length === 0 || /[\r\n]/.test(record))
        return { outcome: Promise.resolve(localRejection("one non-empty line", "record is empty or holds a line break")) };
      text = record;
    } else {
      const json = JSON.stringify(record);
      if (json === undefined) return { outcome: Promise.resolve(localRejection("a JSON value", "record cannot be written as JSON")) };
      text = json;
    }
    const bytes = byteLength(text) + 1;
    const outcome = new Promise<RecordOutcome>((resolve, reject) => {
      this.buffer.push({ text, bytes, resolve, reject });
    });
    this.bufferBytes += bytes;
    this.schedule();
    return { outcome };
  }

  /** Resolves once every record taken in so far is committed (or rejects when the producer failed). */
  async flush(): Promise<void> {
    // The spool's frames are read back first: they count as taken in.
    await this.ready;
    if (this.linger !== null) {
      clearTimeout(this.linger);
      this.linger = null;
    }
    this.pump(true);
    if (this.failure !== null) throw this.failure;
    if (this.buffer.length === 0 && this.unacked.length === 0) return;
    return new Promise((resolve, reject) => this.idleWaiters.push({ resolve, reject }));
  }

  /** Waits for every ack, then closes the connection (and the spool). */
  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.closing = true;
      if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
      if (this.watchdog !== null) clearInterval(this.watchdog);
      this.socket?.close(1000, "producer closed");
      this.socket = null;
      await this.spool?.close();
    }
  }

  /** Gives up at once: waiting records reject; spooled frames stay for the next process. */
  async destroy(reason = "producer destroyed"): Promise<void> {
    this.fail(new ProducerError(reason, 0));
    this.closing = true;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.socket?.close(1000, reason);
    this.socket = null;
    await this.spool?.close();
  }

  private async start(): Promise<void> {
    if (this.o.spoolDir !== undefined) {
      // Loaded only with a spool: browsers never reach node:fs.
      const { Spool } = require("./spool") as typeof import("./spool");
      this.spool = await Spool.open(this.o.spoolDir, this.o.spoolMaxBytes, this.o.spoolFsync);
      for (const f of this.spool.pending) {
        this.unacked.push({ seq: f.seq, text: f.text, bytes: f.bytes, count: f.count, records: null, durable: Promise.resolve() });
      }
    }
    this.connect();
  }

  private url(): string {
    const base = this.o.url.replace(/\/+$/, "");
    let url = `${base}/v1/ws?stream=${encodeURIComponent(this.o.stream)}&producer=${encodeURIComponent(this.producer)}`;
    if (this.o.key !== undefined && !isNode()) url += `&token=${encodeURIComponent(this.o.key)}`;
    return url;
  }

  private connect(): void {
    if (this.closing || this.failure !== null) return;
    this.connected = false;
    this.sent = 0;
    let socket: Socket;
    let refused: { status: number; retryAfterMs: number; message: string } | null = null;
    let closed = false;
    const onClose = (code: number, reason: string) => {
      if (closed) return;
      closed = true;
      if (this.socket !== socket) return;
      this.socket = null;
      this.connected = false;
      this.onClosed(code, reason, refused);
    };
    if (isNode()) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const NodeWebSocket = require("ws") as typeof import("ws");
      const ws = new NodeWebSocket(this.url(), {
        perMessageDeflate: false,
        handshakeTimeout: 10_000,
        headers: this.o.key !== undefined ? { Authorization: `Bearer ${this.o.key}` } : {},
      });
      ws.on("unexpected-response", (req, res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body = (body + c).slice(0, 2000)));
        res.on("end", () => {
          const after = Number(res.headers["retry-after"]);
          refused = { status: res.statusCode ?? 0, retryAfterMs: Number.isFinite(after) ? after * 1000 : 0, message: body };
          req.destroy();
          onClose(1006, "");
        });
        res.on("error", () => onClose(1006, ""));
      });
      ws.on("error", () => undefined);
      socket = ws as unknown as Socket;
    } else {
      socket = new (globalThis as unknown as { WebSocket: new (url: string) => Socket }).WebSocket(this.url());
    }
    this.socket = socket;
    socket.onmessage = (ev) => this.onMessage(socket, typeof ev.data === "string" ? ev.data : String(ev.data));
    socket.onerror = () => undefined;
    socket.onclose = (ev) => onClose(ev.code, ev.reason);
  }

  private onClosed(code: number, reason: string, refused: { status: number; retryAfterMs: number; message: string } | null): void {
    if (this.closing) return;
    if (code === CLOSE_SUPERSEDED) {
      return this.fail(new ProducerError(`producer ${this.producer} superseded by a newer session (4409)`, code));
    }
    if (refused !== null && [400, 401, 403, 404].includes(refused.status)) {
      return this.fail(new ProducerError(`upgrade refused: ${refused.status} ${refused.message}`, refused.status));
    }
    this.downSince ??= Date.now();
    if (Date.now() - this.downSince > this.o.giveUpAfterMs) {
      const last = refused !== null ? `${refused.status} ${refused.message}` : `${code} ${reason}`.trim();
      return this.fail(
        new ProducerError(
          `could not deliver: no session for ${Math.round((Date.now() - this.downSince) / 1000)} s (last: ${last})`,
          refused?.status ?? code,
        ),
      );
    }
    // Backoff with full jitter; a 1013 close or a Retry-After sets the floor.
    const exp = Math.min(this.o.maxDelayMs, this.o.initialDelayMs * 2 ** Math.min(this.attempts, 20));
    let delay = Math.random() * exp;
    if (code === CLOSE_TRY_AGAIN_LATER) delay = Math.max(delay, this.o.initialDelayMs * 5);
    if (refused !== null && refused.retryAfterMs > 0) delay = Math.max(delay, refused.retryAfterMs);
    this.attempts++;
    this.o.onEvent?.({
      type: "disconnected",
      code: refused?.status ?? code,
      reason: refused?.message ?? reason,
      retryInMs: Math.round(delay),
    });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  private onMessage(socket: Socket, data: string): void {
    if (this.socket !== socket) return;
    this.heardAt = Date.now();
    let msg: any;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "hello") return void this.onHello(msg);
    if (msg.type === "ack") this.onAck(msg);
  }

  private async onHello(hello: { window: number; max_frame_bytes: number; committed_seq?: number }): Promise<void> {
    const committed = Number(hello.committed_seq ?? 0);
    this.window = Math.max(1, hello.window);
    this.maxFrame = hello.max_frame_bytes;
    // Frames up to committed_seq were stored by an earlier connection (their acks were lost).
    let n = 0;
    while (n < this.unacked.length && this.unacked[n].seq <= committed) n++;
    if (n > 0) {
      for (const f of this.unacked.splice(0, n)) for (const r of f.records ?? []) r.resolve({ status: "committed" });
      await this.spool?.ack(committed);
    }
    // The server's session starts below our numbering only when it forgot the producer (retention): number on from it.
    if (this.unacked.length > 0 && this.unacked[0].seq !== committed + 1) {
      this.unacked.forEach((f, i) => (f.seq = committed + 1 + i));
      await this.spool?.renumber(committed + 1);
    }
    this.nextSeq = committed + 1 + this.unacked.length;
    this.connected = true;
    this.downSince = null;
    this.watch();
    this.o.onEvent?.({ type: "connected", committedSeq: committed, resent: Math.min(this.unacked.length, this.window) });
    this.notifyIdle();
    this.pump(false);
  }

  private onAck(ack: { seq: number; accepted: number; rejected: number; duplicates: number; errors: RecordError[] }): void {
    const frame = this.unacked[0];
    if (frame === undefined || frame.seq !== ack.seq) return; // Not ours to settle (cannot happen with a conforming server).
    this.unacked.shift();
    this.sent--;
    this.attempts = 0;
    if (frame.records !== null) settleFrame(frame.records, ack);
    void this.spool?.ack(ack.seq);
    this.pump(false);
    this.notifyIdle();
  }

  /** Drops a connection that went silent with frames out: it is opened again and they are resent. */
  private watch(): void {
    if (this.watchdog !== null) return;
    const every = Math.max(100, Math.min(5000, this.o.silenceTimeoutMs / 4));
    this.watchdog = setInterval(() => {
      if (this.closing || this.failure !== null) {
        clearInterval(this.watchdog!);
        this.watchdog = null;
        return;
      }
      const socket = this.socket;
      if (socket === null || !this.connected || this.sent === 0 || Date.now() - this.heardAt < this.o.silenceTimeoutMs) return;
      this.socket = null;
      this.connected = false;
      socket.close(4000, "no ack in time");
      this.onClosed(1006, "no word from the server in time", null);
    }, every);
    (this.watchdog as { unref?: () => void }).unref?.();
  }

  private notifyIdle(): void {
    if (this.buffer.length > 0 || this.unacked.length > 0) return;
    for (const w of this.idleWaiters.splice(0)) w.resolve();
  }

  /** Builds a frame when one is full (or `force`/linger), and sends what the window allows. */
  private schedule(): void {
    if (this.buffer.length >= this.o.maxBatchRecords || this.bufferBytes >= this.frameLimit()) return this.pump(false);
    if (this.linger === null) {
      this.linger = setTimeout(() => {
        this.linger = null;
        this.pump(true);
      }, this.o.lingerMs);
    }
  }

  private frameLimit(): number {
    return this.maxFrame > 0 ? Math.min(this.o.maxBatchBytes, this.maxFrame) : this.o.maxBatchBytes;
  }

  private pump(partial: boolean): void {
    if (!this.connected || this.socket === null || this.socket.readyState !== OPEN) return;
    // Build frames while the window has room: a partial one only when lingering is over.
    while (this.unacked.length < this.window && this.buffer.length > 0) {
      const full = this.buffer.length >= this.o.maxBatchRecords || this.bufferBytes >= this.frameLimit();
      if (!full && !partial) break;
      if (this.spool !== null && this.spool.bytes >= this.spool.maxBytes) break;
      this.buildFrame();
    }
    if (this.buffer.length > 0 && this.linger === null && this.unacked.length < this.window) this.schedule();
    const socket = this.socket;
    while (this.sent < this.unacked.length && this.sent < this.window) {
      // The silence watchdog counts from the first frame out, not from an idle stretch before it.
      if (this.sent === 0) this.heardAt = Date.now();
      const frame = this.unacked[this.sent++];
      // Sent in order once durable: a frame never overtakes an earlier one still being spooled.
      void frame.durable.then(() => {
        if (this.socket === socket && socket.readyState === OPEN) socket.send(frame.text);
      });
    }
  }

  private buildFrame(): void {
    const limit = this.frameLimit();
    let n = 0;
    let bytes = 0;
    while (n < this.buffer.length && n < this.o.maxBatchRecords) {
      const b = this.buffer[n].bytes;
      if (n > 0 && bytes + b > limit) break;
      bytes += b;
      n++;
    }
    const records = this.buffer.splice(0, n);
    this.bufferBytes -= bytes;
    for (const w of this.roomWaiters.splice(0, n)) w();
    // A single record over the server's frame limit can never be stored: rejected here, naming the limit.
    if (n === 1 && this.maxFrame > 0 && bytes > this.maxFrame) {
      records[0].resolve(
        localRejection(`a record under max_frame_bytes ${this.maxFrame}`, `record of ${bytes} bytes exceeds max_frame_bytes`),
      );
      return;
    }
    let text = "";
    for (let i = 0; i < records.length; i++) text += i === 0 ? records[i].text : `\n${records[i].text}`;
    const frame: OutFrame = { seq: this.nextSeq++, text, bytes, records, count: records.length, durable: Promise.resolve() };
    if (this.spool !== null) {
      frame.durable = this.spool.append({ seq: frame.seq, count: frame.count, text, bytes });
      frame.durable.catch((err) => this.fail(new ProducerError(`spool write failed: ${(err as Error).message}`, 0)));
    }
    this.unacked.push(frame);
  }

  private fail(err: ProducerError): void {
    if (this.failure !== null) return;
    this.failure = err;
    for (const r of this.buffer.splice(0)) r.reject(err);
    for (const f of this.unacked) for (const r of f.records ?? []) r.reject(err);
    this.unacked = [];
    for (const w of this.roomWaiters.splice(0)) w();
    for (const w of this.idleWaiters.splice(0)) w.reject(err);
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.socket?.close(1000, "producer failed");
    this.socket = null;
  }
}

/** Each record of an acknowledged frame: its errors (by index) make it rejected; the others accepted or duplicate. */
function settleFrame(records: Waiting[], ack: { accepted: number; duplicates: number; errors: RecordError[] }): void {
  const errors = new Map<number, RecordError[]>();
  for (const e of ack.errors) {
    const list = errors.get(e.index);
    if (list) list.push(e);
    else errors.set(e.index, [e]);
  }
  const stored: RecordOutcome =
    ack.duplicates === 0 ? { status: "accepted" } : ack.accepted === 0 ? { status: "duplicate" } : { status: "committed" };
  for (let i = 0; i < records.length; i++) {
    const e = errors.get(i);
    records[i].resolve(e !== undefined ? { status: "rejected", errors: e } : stored);
  }
}

function localRejection(expected: string, message: string): RecordOutcome {
  return { status: "rejected", errors: [{ index: 0, path: "$", expected, message }] };
}

function isNode(): boolean {
  return typeof process !== "undefined" && process.versions?.node !== undefined;
}

const encoder = new TextEncoder();
function byteLength(text: string): number {
  // ASCII fast path: most records are.
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return encoder.encode(text).length;
  return text.length;
}

/**
 * The bench's events, shaped like what real producers send (docs/performance.md#workload): a random UUIDv4
 * event id (or a time-ordered UUIDv7 in the labelled second run), about 300 bytes of JSON with a `payload`
 * of several keys holding nested objects and an array, a `metadata` object, and an ISO timestamp a few
 * seconds before the send.
 *
 * A frame is built once as bytes with fixed-width slots for each event's id and timestamp; sending the next
 * frame rewrites those slots in place, so the generator's hot path allocates nothing per event. The COPY
 * ceiling parses frames made the same way, so both measure the same rows.
 */
import crypto from "node:crypto";

export type IdKind = "uuidv4" | "uuidv7";
export const ID_KINDS: readonly IdKind[] = ["uuidv4", "uuidv7"];

const ID_LENGTH = 36;
/** `2026-12-03T00:53:40.123Z`: always 24 characters for years 1000–9999. */
const TIME_LENGTH = 24;
/** Event times lag the send by up to this much: producers batch, clocks differ. */
const JITTER_MS = 5000;

const SERVICES = ["checkout", "payments", "search", "inventory", "auth-gateway", "notifications", "catalog", "shipping"];
const EVENT_TYPES = [
  "order.created",
  "order.item_added",
  "payment.authorized",
  "search.query",
  "user.login",
  "page.view",
  "cart.abandoned",
  "shipment.dispatched",
  "stock.reserved",
  "email.sent",
];
const REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"];
const SDKS = ["js/1.4.2", "py/0.9.1", "go/2.0.0"];
const PAGES = ["/", "/cart", "/checkout", "/product", "/search", "/account"];

/** Distinct event bodies a frame cycles through, so the table and its index see a spread of values. */
export const VARIANTS = 256;

/** Deterministic, so every process builds the same variants. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** JSON of one event around its two slots: `head` id `middle` timestamp `tail`. */
interface Variant {
  middle: string;
  tail: string;
  /** How far before the send this event's timestamp lies. */
  jitterMs: number;
}

const HEAD = `{"event_id":"`;

function buildVariants(): Variant[] {
  const rand = lcg(0x1e57d);
  const int = (n: number) => Math.floor(rand() * n);
  const pick = <T>(list: readonly T[]) => list[int(list.length)];
  const hex = (len: number) => {
    let s = "";
    for (let i = 0; i < len; i++) s += "0123456789abcdef"[int(16)];
    return s;
  };
  const variants: Variant[] = [];
  for (let v = 0; v < VARIANTS; v++) {
    const items = Array.from({ length: 1 + int(2) }, () => `S${String(int(100_000)).padStart(5, "0")}`);
    const payload = {
      user: `u${String(int(1_000_000)).padStart(6, "0")}`,
      sid: hex(8),
      page: { path: pick(PAGES) },
      items,
      cents: 100 + int(99_900),
      ok: rand() < 0.95,
    };
    const metadata = { sdk: pick(SDKS), region: pick(REGIONS) };
    const middle = `","service_name":${JSON.stringify(pick(SERVICES))},"event_type":${JSON.stringify(pick(EVENT_TYPES))},"timestamp":"`;
    const tail = `","payload":${JSON.stringify(payload)},"metadata":${JSON.stringify(metadata)}}`;
    variants.push({ middle, tail, jitterMs: int(JITTER_MS) });
  }
  return variants;
}

let cached: Variant[] | null = null;
function variants(): Variant[] {
  return (cached ??= buildVariants());
}

/** A time-ordered UUIDv7 (RFC 9562): 48 bits of Unix ms, version 7, then the random bits of a UUIDv4. */
export function uuidv7(ms: number = Date.now()): string {
  const random = crypto.randomUUID();
  const t = ms.toString(16).padStart(12, "0");
  return `${t.slice(0, 8)}-${t.slice(8)}-7${random.slice(15)}`;
}

export function newId(kind: IdKind): string {
  return kind === "uuidv4" ? crypto.randomUUID() : uuidv7();
}

/** One event as JSON, with a fresh id and a time about `now`. */
export function eventJson(kind: IdKind, n: number, now: number = Date.now()): string {
  const v = variants()[n % VARIANTS];
  return `${HEAD}${newId(kind)}${v.middle}${new Date(now - v.jitterMs).toISOString()}${v.tail}`;
}

/**
 * A JSON array of `count` events whose ids and timestamps are rewritten in place by `stamp()`.
 * The buffer is reused: it is safe to stamp again once the previous send no longer reads it (`ws` copies
 * while masking; an HTTP body is done once its response arrived).
 */
export class FrameTemplate {
  readonly buffer: Buffer;
  private readonly idSlots: Int32Array;
  private readonly timeSlots: Int32Array;
  private readonly jitters: Float64Array;
  private readonly count: number;
  /** The random bytes of a frame's UUIDv4 ids, drawn again for each stamp. */
  private readonly random: Buffer;
  private readonly times = new IsoTimeWriter();

  constructor(
    private readonly kind: IdKind,
    count: number,
  ) {
    const parts: string[] = ["["];
    this.idSlots = new Int32Array(count);
    this.timeSlots = new Int32Array(count);
    this.jitters = new Float64Array(count);
    let length = 1;
    const all = variants();
    for (let i = 0; i < count; i++) {
      const v = all[i % VARIANTS];
      const head = `${i > 0 ? "," : ""}${HEAD}`;
      this.idSlots[i] = length + head.length;
      this.timeSlots[i] = this.idSlots[i] + ID_LENGTH + v.middle.length;
      this.jitters[i] = v.jitterMs;
      const body = `${head}${"0".repeat(ID_LENGTH)}${v.middle}${"0".repeat(TIME_LENGTH)}${v.tail}`;
      parts.push(body);
      length += body.length;
    }
    parts.push("]");
    // Everything is ASCII, so string offsets are byte offsets.
    this.buffer = Buffer.from(parts.join(""), "latin1");
    this.count = count;
    this.random = Buffer.alloc(16 * count);
  }

  get bytes(): number {
    return this.buffer.length;
  }

  /**
   * New ids and timestamps (a few seconds before `now`) in every slot; returns the (same) buffer. Written as
   * bytes: a UUIDv4 from a frame's worth of random bytes, a time from its day's cached date and its digits,
   * where randomUUID(), toISOString() and a string write per slot were a fifth of a generator's CPU
   * (docs/performance.md#workload). UUIDv7 ids take the string path: that run is not about the generator.
   */
  stamp(now: number = Date.now()): Buffer {
    const buf = this.buffer;
    if (this.kind === "uuidv4") {
      crypto.randomFillSync(this.random);
      for (let i = 0; i < this.count; i++) writeUuidV4(this.random, i * 16, buf, this.idSlots[i]);
    } else {
      for (let i = 0; i < this.count; i++) buf.write(uuidv7(now), this.idSlots[i], ID_LENGTH, "latin1");
    }
    for (let i = 0; i < this.count; i++) this.times.write(now - this.jitters[i], buf, this.timeSlots[i]);
    return buf;
  }
}

/** Char codes of the hex digits. */
const HEX_DIGITS = Buffer.from("0123456789abcdef", "latin1");

/** The 16 random bytes at `from` as a UUIDv4 (version and variant bits set) at `at`, as randomUUID() spells it. */
export function writeUuidV4(random: Buffer, from: number, buf: Buffer, at: number): void {
  let o = at;
  for (let b = 0; b < 16; b++) {
    let x = random[from + b];
    if (b === 6) x = (x & 0x0f) | 0x40;
    else if (b === 8) x = (x & 0x3f) | 0x80;
    buf[o++] = HEX_DIGITS[x >>> 4];
    buf[o++] = HEX_DIGITS[x & 15];
    if (b === 3 || b === 5 || b === 7 || b === 9) buf[o++] = 45;
  }
}

const DAY_MS = 86_400_000;

/** Writes times as Date.prototype.toISOString() does, at a byte offset, the date part cached per day. */
export class IsoTimeWriter {
  private dayStart = Number.NaN;
  /** `YYYY-MM-DDT` of the day starting at dayStart. */
  private readonly day = Buffer.alloc(11);

  write(t: number, buf: Buffer, at: number): void {
    let ms = t - this.dayStart;
    if (!(ms >= 0 && ms < DAY_MS)) {
      this.dayStart = t - (((t % DAY_MS) + DAY_MS) % DAY_MS);
      this.day.write(new Date(this.dayStart).toISOString().slice(0, 11), "latin1");
      ms = t - this.dayStart;
    }
    this.day.copy(buf, at);
    const h = Math.floor(ms / 3_600_000);
    ms -= h * 3_600_000;
    const m = Math.floor(ms / 60_000);
    ms -= m * 60_000;
    const sec = Math.floor(ms / 1000);
    ms -= sec * 1000;
    buf[at + 11] = 48 + Math.floor(h / 10);
    buf[at + 12] = 48 + (h % 10);
    buf[at + 13] = 58;
    buf[at + 14] = 48 + Math.floor(m / 10);
    buf[at + 15] = 48 + (m % 10);
    buf[at + 16] = 58;
    buf[at + 17] = 48 + Math.floor(sec / 10);
    buf[at + 18] = 48 + (sec % 10);
    buf[at + 19] = 46;
    buf[at + 20] = 48 + Math.floor(ms / 100);
    buf[at + 21] = 48 + (Math.floor(ms / 10) % 10);
    buf[at + 22] = 48 + (ms % 10);
    buf[at + 23] = 90;
  }
}

/**
 * The bench's events (~250 bytes of JSON each, valid `events` records) and pre-built frames.
 *
 * A frame is built once as bytes with fixed-width slots for the event ids; sending the next frame only
 * rewrites the digits of those slots in place, so the generator's hot path allocates nothing per event.
 * The COPY ceiling parses the very same JSON, so both measure the same rows.
 */

/** Digits of the per-connection event counter inside an id: fixed width so ids can be rewritten in place. */
export const ID_DIGITS = 10;

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
const CURRENCIES = ["EUR", "USD", "GBP", "JPY"];

/** Distinct event bodies a frame cycles through, so the index sees a spread of keys. */
export const VARIANTS = 64;

/** Deterministic, so every process builds the same variants. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

interface Variant {
  /** JSON after the id's closing quote, ending with the closing brace. */
  tail: string;
}

function buildVariants(baseTime: number): Variant[] {
  const rand = lcg(0x1e57d);
  const int = (n: number) => Math.floor(rand() * n);
  const hex = (len: number) => {
    let s = "";
    for (let i = 0; i < len; i++) s += "0123456789abcdef"[int(16)];
    return s;
  };
  const variants: Variant[] = [];
  for (let v = 0; v < VARIANTS; v++) {
    const payload = {
      user_id: `u-${String(int(100_000)).padStart(5, "0")}`,
      session: hex(16),
      sku: `SKU-${String(int(100_000)).padStart(5, "0")}`,
      quantity: 1 + int(9),
      price_cents: 100 + int(99_900),
      currency: CURRENCIES[int(CURRENCIES.length)],
      ok: rand() < 0.9,
    };
    const rest = {
      service_name: SERVICES[int(SERVICES.length)],
      event_type: EVENT_TYPES[int(EVENT_TYPES.length)],
      payload,
      timestamp: new Date(baseTime + v * 37).toISOString(),
    };
    // `{"event_id":"<id>",` + the rest of the object without its opening brace.
    variants.push({ tail: `",${JSON.stringify(rest).slice(1)}` });
  }
  return variants;
}

let cached: { baseTime: number; variants: Variant[] } | null = null;

/** Variants with timestamps of about now: event tables may be partitioned by month around now. */
function variants(): Variant[] {
  cached ??= { baseTime: Date.now(), variants: buildVariants(Date.now()) };
  return cached.variants;
}

function digits(n: number): string {
  return String(n).padStart(ID_DIGITS, "0");
}

/** One event as JSON; its id is `${prefix}${n as ID_DIGITS digits}`. */
export function eventJson(prefix: string, n: number): string {
  return `{"event_id":"${prefix}${digits(n)}${variants()[n % VARIANTS].tail}`;
}

/**
 * A JSON array of `count` events whose ids are rewritten in place by `stamp(first)`: ids first..first+count-1.
 * The buffer is reused: it is safe to stamp again once the previous send no longer reads it (`ws` copies
 * while masking; an HTTP body is done once its response arrived).
 */
export class FrameTemplate {
  readonly buffer: Buffer;
  private readonly slots: Int32Array;
  private readonly count: number;

  constructor(prefix: string, count: number) {
    if (!/^[\x21-\x7e]*$/.test(prefix) || prefix.includes('"') || prefix.includes("\\")) {
      throw new Error(`id prefix must be plain ASCII: ${prefix}`);
    }
    const parts: string[] = ["["];
    const slots = new Int32Array(count);
    let length = 1;
    for (let i = 0; i < count; i++) {
      const head = `${i > 0 ? "," : ""}{"event_id":"${prefix}`;
      slots[i] = length + head.length;
      // Variant by position, so consecutive frames repeat the same mix (n % VARIANTS matches eventJson
      // only when count is a multiple of VARIANTS; the mix is what matters here, not the pairing).
      const body = `${head}${"0".repeat(ID_DIGITS)}${variants()[i % VARIANTS].tail}`;
      parts.push(body);
      length += body.length;
    }
    parts.push("]");
    // Everything is ASCII, so string offsets are byte offsets.
    this.buffer = Buffer.from(parts.join(""), "latin1");
    this.slots = slots;
    this.count = count;
  }

  get bytes(): number {
    return this.buffer.length;
  }

  /** Writes ids first..first+count-1 into the slots and returns the (same) buffer. */
  stamp(first: number): Buffer {
    const buf = this.buffer;
    const slots = this.slots;
    for (let i = 0; i < this.count; i++) {
      let v = first + i;
      const start = slots[i];
      for (let p = start + ID_DIGITS - 1; p >= start; p--) {
        buf[p] = 48 + (v % 10);
        v = Math.floor(v / 10);
      }
    }
    return buf;
  }
}

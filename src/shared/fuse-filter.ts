/**
 * The filter of a closed group of id-state generations (docs/storage.md#sealed-group-filters): a binary fuse
 * filter (Graf and Lemire, "Binary Fuse Filters: Fast and Smaller Than Xor Filters", 2022, arity 3) built once
 * from the group's cuckoo filter (src/shared/dedup-filter.ts) when no generation can join the group any more.
 * At the same memory it lets through several times fewer absent keys than the cuckoo filter once both are
 * folded, which is where a deployment past `dedupFilterMb` lives (docs/performance.md#past-the-filter-budget):
 * every false positive is a lookup in each of the group's generations.
 *
 * Its keys are the cuckoo filter's entries, not the ids: a key held there is known by its canonical bucket (the
 * lower of its two) and its 16-bit fingerprint, and that pair is what this filter holds. So it answers yes for
 * what the cuckoo filter as built answered yes for (0.011% of absent keys), and for 1 in 2^width more. Folding
 * keeps the low bits of each entry: the xor of three entries' low bits is the low bits of their xor.
 *
 * Layout (little-endian): a header of 4 words (the cuckoo filter's bucket count, FUSE_FORMAT | width, the shard
 * count, the entries), a table of 4 words a shard (its first entry, segment length, segment count × length,
 * seed), then the entries packed at `width` bits, then PAD_BYTES. Shards split the keys by their fingerprint's
 * high byte (shardsByHigh), so that one is built at a time in little scratch memory.
 */
import { altOffsets, type DedupFilter, fmix32 } from "./dedup-filter";

/** Flag of header word 1 (a cuckoo filter's holds its width alone: 16, 14, 12 or 8). */
const FUSE_FORMAT = 0x10000;
/**
 * Its entries' widths: as built, then each fold's. Down to 4 bits (6.25%), since a filter left out of the
 * budget sends every id to its 10 generations; a cuckoo filter stops at 8 (2.9%).
 */
const WIDTHS = [16, 14, 12, 10, 8, 6, 4];
const HEADER_WORDS = 4;
const SHARD_WORDS = 4;
/** A shard's keys at most: the scratch of a build is sized for one shard (sealFilter). */
export const SHARD_KEYS = 1 << 18;
/** Bytes past the last entry, so that any entry is read as 3 bytes. */
const PAD_BYTES = 3;
/** Seeds a shard tries before its build gives up (each fails with a probability well under 1%). */
const MAX_SEEDS = 16;
/** The cuckoo filter's slots a bucket (src/shared/dedup-filter.ts SLOTS). */
const SLOTS = 4;

/** Segment length and entries for `n` keys, as the paper's reference code sizes an arity-3 filter. */
function sizeFor(n: number): { segment: number; segmentCountLength: number; entries: number } {
  const segment = n < 2 ? 4 : Math.min(1 << Math.floor(Math.log(n) / Math.log(3.33) + 2.25), 1 << 18);
  const factor = n < 2 ? 0 : Math.max(1.125, 0.875 + (0.25 * Math.log(1_000_000)) / Math.log(n));
  const segments = Math.max(3, Math.ceil(Math.round(n * factor) / segment)) - 2;
  return { segment, segmentCountLength: segments * segment, entries: (segments + 2) * segment };
}

/**
 * The words of the key (canonical bucket `c`, fingerprint `fp`) under `seed` into `out`: the first has its
 * first entry in its high bits (firstEntry) and its 16-bit fingerprint in its low bits, the second the other
 * two entries' offsets. Two mixes each of both halves, so two keys share all three entries only by the chance
 * of about 64 bits (keys of one fingerprint never: the first word then differs).
 */
function keyWords(c: number, fp: number, seed: number, out: Uint32Array): void {
  out[0] = fmix32(Math.imul(c ^ seed, 0x9e3779b1) ^ fp);
  out[1] = fmix32(Math.imul(fp ^ seed, 0x85ebca6b) ^ Math.imul(c, 0xc2b2ae35));
}

/** A key's first entry in its shard: the high bits of its first word scaled to [0, segmentCountLength). */
function firstEntry(k1: number, segmentCountLength: number): number {
  return Math.floor(k1 * segmentCountLength * 2 ** -32);
}

/** Each fingerprint high byte's shard (1..255 spread evenly over `shards`, at most 255). */
function shardsByHigh(shards: number): Uint8Array {
  return Uint8Array.from({ length: 256 }, (_, high) => Math.floor((Math.max(1, high) - 1) * (shards / 255)));
}

export class FuseFilter {
  private readonly all: Uint8Array;
  /** The cuckoo filter's bucket count and other-bucket offsets: what gives a key its canonical bucket. */
  private readonly buckets: number;
  private readonly alt: Uint32Array;
  private readonly width: number;
  private readonly shards: number;
  private readonly table: Uint32Array;
  private readonly shardOf: Uint8Array;
  private readonly entries: Uint8Array;
  /** How many entries (the header's fourth word). */
  private readonly entryCount: number;
  private readonly w = new Uint32Array(2);

  constructor(words: SharedArrayBuffer) {
    const all = new Uint8Array(words);
    const header = new DataView(words);
    const ok = all.byteLength >= HEADER_WORDS * 4 && (header.getUint32(4, true) & ~0xff) === FUSE_FORMAT;
    const width = ok ? header.getUint32(4, true) & 0xff : 0;
    const shards = ok ? header.getUint32(8, true) : 0;
    const entries = ok ? header.getUint32(12, true) : 0;
    const at = (HEADER_WORDS + shards * SHARD_WORDS) * 4;
    if (!ok || !WIDTHS.includes(width) || all.byteLength !== at + entryBytes(entries, width)) {
      throw new Error(`not a sealed group filter: ${all.byteLength} bytes, ${shards} shards of ${width}-bit entries`);
    }
    this.all = all;
    this.buckets = header.getUint32(0, true);
    this.alt = altOffsets(this.buckets);
    this.width = width;
    this.shards = shards;
    this.shardOf = shardsByHigh(shards);
    this.table = new Uint32Array(words, HEADER_WORDS * 4, shards * SHARD_WORDS);
    this.entries = new Uint8Array(words, at);
    this.entryCount = entries;
  }

  /** Whether `bytes` hold a filter of this kind (header word 1). */
  static holds(bytes: Uint8Array): boolean {
    return bytes.byteLength >= 8 && (new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true) & ~0xff) === FUSE_FORMAT;
  }

  /** DedupFilter.collectHits: the indexes of the first `n` keys (first hash word, fingerprint) it may hold. */
  collectHits(h0s: Uint32Array, fps: Uint32Array, n: number, out: Uint32Array): number {
    const { buckets, alt, table, shardOf, entries, w } = this;
    const width = this.width;
    const mask = (1 << width) - 1;
    let hits = 0;
    for (let i = 0; i < n; i++) {
      const fp = fps[i];
      const high = fp >>> 8;
      const b = h0s[i] % buckets;
      let o = alt[high] - b;
      if (o < 0) o += buckets;
      const c = Math.min(b, o);
      const t = shardOf[high] * SHARD_WORDS;
      const segment = table[t + 1];
      keyWords(c, fp, table[t + 3], w);
      const base = table[t];
      const e0 = base + firstEntry(w[0], table[t + 2]);
      const e1 = (e0 + segment) ^ (w[1] & (segment - 1));
      const e2 = (e0 + 2 * segment) ^ ((w[1] >>> 16) & (segment - 1));
      if (((read(entries, e0, width) ^ read(entries, e1, width) ^ read(entries, e2, width) ^ w[0]) & mask) === 0) out[hits++] = i;
    }
    return hits;
  }

  /** The width of its entries: 16 as built, 14, 12, 10, 8, 6 or 4 once folded. */
  get bits(): number {
    return this.width;
  }

  /** Whether fold() can narrow it further. */
  get foldable(): boolean {
    return this.width > WIDTHS[WIDTHS.length - 1];
  }

  /** It takes no keys: a closed group's filter never changes. */
  get takesKeys(): false {
    return false;
  }

  /**
   * The same keys in less memory (a new SharedArrayBuffer), each entry cut to its low bits, as the budget folds
   * a cuckoo filter (docs/storage.md#filter-memory), two bits at a time: 16 → 14 → … → 4, or straight to `to`
   * (one copy); 1 in 2^width absent keys let through beyond what the cuckoo filter as built let through.
   */
  fold(to = this.width - 2): FuseFilter {
    if (!this.foldable) throw new Error(`a sealed group filter of ${this.width}-bit entries cannot be folded again`);
    if (to >= this.width || !WIDTHS.includes(to))
      throw new Error(`a sealed group filter of ${this.width}-bit entries cannot be folded to ${to}`);
    const entries = this.entryCount;
    const out = emptyFuse(this.buckets, to, this.shards, entries);
    new Uint32Array(out.buffer, HEADER_WORDS * 4, this.shards * SHARD_WORDS).set(this.table);
    const into = out.subarray((HEADER_WORDS + this.shards * SHARD_WORDS) * 4);
    const mask = (1 << to) - 1;
    let acc = 0;
    let held = 0;
    let p = 0;
    for (let e = 0; e < entries; e++) {
      acc |= (read(this.entries, e, this.width) & mask) << held;
      held += to;
      while (held >= 8) {
        into[p++] = acc & 255;
        acc >>>= 8;
        held -= 8;
      }
    }
    if (held > 0) into[p] = acc & 255;
    return new FuseFilter(out.buffer as SharedArrayBuffer);
  }

  get shared(): SharedArrayBuffer {
    return this.all.buffer as SharedArrayBuffer;
  }

  buffer(): Buffer {
    return Buffer.from(this.all.buffer, this.all.byteOffset, this.all.byteLength);
  }

  bytes(): Uint8Array {
    return this.all;
  }

  get byteLength(): number {
    return this.all.byteLength;
  }
}

/** Entry `e` of `width` bits (low bits of the 24 read; the caller masks). */
function read(m: Uint8Array, e: number, width: number): number {
  const bit = e * width;
  const p = bit >>> 3;
  return (m[p] | (m[p + 1] << 8) | (m[p + 2] << 16)) >>> (bit & 7);
}

function entryBytes(entries: number, width: number): number {
  return Math.ceil((entries * width) / 8) + PAD_BYTES;
}

/** An empty filter's bytes in shared memory, its header written (the one place it is laid out). */
function emptyFuse(buckets: number, width: number, shards: number, entries: number): Uint8Array {
  const all = new Uint8Array(new SharedArrayBuffer((HEADER_WORDS + shards * SHARD_WORDS) * 4 + entryBytes(entries, width)));
  const header = new DataView(all.buffer);
  header.setUint32(0, buckets, true);
  header.setUint32(4, FUSE_FORMAT | width, true);
  header.setUint32(8, shards, true);
  header.setUint32(12, entries, true);
  return all;
}

/** Keys (or slots scanned) between two pauses of a build (sealFilter): a few milliseconds of a thread. */
const STEP = 1 << 15;

/**
 * Builds the sealed filter of a group from its cuckoo filter as built (16-bit fingerprints), a shard at a time,
 * pausing (yielding) every STEP keys or slots so that its caller can let other work run; returns the filter, or
 * null when a shard's keys could not be placed under any of MAX_SEEDS seeds (the group then keeps its cuckoo
 * filter). Scratch: ~30 bytes a key of one shard (at most SHARD_KEYS), reused from shard to shard.
 */
export function* sealFilter(cuckoo: DedupFilter): Generator<void, FuseFilter | null> {
  const slots = cuckoo.slotsAsBuilt();
  if (slots === null) throw new Error("a sealed group filter is built from a cuckoo filter as built");
  const buckets = cuckoo.bucketCount;
  /** The other bucket of slot q's fingerprint. */
  const other = (q: number): number => cuckoo.other((q / SLOTS) | 0, slots[q] >>> 8);
  /**
   * Whether an earlier slot of the same two buckets holds the same fingerprint: the same key of this filter (the
   * cuckoo filter answers alike for both), held once here, since a key twice never peels.
   */
  const duplicate = (q: number): boolean => {
    const fp = slots[q];
    const b = (q / SLOTS) | 0;
    for (let j = b * SLOTS; j < q; j++) if (slots[j] === fp) return true;
    const o = other(q);
    if (o < b) for (let j = o * SLOTS; j < o * SLOTS + SLOTS; j++) if (slots[j] === fp) return true;
    return false;
  };
  const byHigh = new Float64Array(256);
  for (let q = 0; q < slots.length; q++) {
    if (slots[q] !== 0 && !duplicate(q)) byHigh[slots[q] >>> 8]++;
    if ((q & (STEP - 1)) === STEP - 1) yield;
  }
  const keys = byHigh.reduce((a, b) => a + b, 0);
  const shards = Math.min(255, Math.max(1, Math.ceil(keys / SHARD_KEYS)));
  const shardOf = shardsByHigh(shards);
  const counts = new Uint32Array(shards);
  for (let high = 1; high < 256; high++) counts[shardOf[high]] += byHigh[high];
  let total = 0;
  const sizes = [...counts].map((n) => {
    const size = { first: total, ...sizeFor(n) };
    total += size.entries;
    return size;
  });
  const out = emptyFuse(buckets, 16, shards, total);
  const table = new Uint32Array(out.buffer, HEADER_WORDS * 4, shards * SHARD_WORDS);
  const entries = out.subarray((HEADER_WORDS + shards * SHARD_WORDS) * 4);
  // Scratch for the largest shard, reused.
  const most = Math.max(...counts);
  const mostEntries = Math.max(...sizes.map((z) => z.entries));
  const cs = new Uint32Array(most);
  const fps = new Uint16Array(most);
  const order = new Uint32Array(most);
  const found = new Uint8Array(most);
  const count = new Uint8Array(mostEntries);
  const xors = new Uint32Array(mostEntries);
  const alone = new Uint32Array(mostEntries);
  const w = new Uint32Array(2);
  const e = new Uint32Array(3);
  for (let s = 0; s < shards; s++) {
    const { first, segment, segmentCountLength, entries: size } = sizes[s];
    table.set([first, segment, segmentCountLength, 0], s * SHARD_WORDS);
    const n = counts[s];
    for (let q = 0, k = 0; q < slots.length && k < n; q++) {
      const fp = slots[q];
      if (fp !== 0 && shardOf[fp >>> 8] === s && !duplicate(q)) {
        const b = (q / SLOTS) | 0;
        const o = other(q);
        cs[k] = Math.min(b, o);
        fps[k++] = fp;
      }
      if ((q & (STEP * 4 - 1)) === STEP * 4 - 1) yield;
    }
    /** Key k's three entries into e, its words into w. */
    const place = (k: number, seed: number): void => {
      keyWords(cs[k], fps[k], seed, w);
      e[0] = firstEntry(w[0], segmentCountLength);
      e[1] = (e[0] + segment) ^ (w[1] & (segment - 1));
      e[2] = (e[0] + 2 * segment) ^ ((w[1] >>> 16) & (segment - 1));
    };
    let seed = 0;
    let peeled = 0;
    for (let attempt = 0; attempt < MAX_SEEDS && peeled < n; attempt++) {
      seed = fmix32(0x5eed0000 + s * MAX_SEEDS + attempt);
      count.fill(0, 0, size);
      xors.fill(0, 0, size);
      // count: 4 a key at an entry, and in its low 2 bits the xor of which of their 3 entries it is for them.
      for (let k = 0; k < n; k++) {
        place(k, seed);
        for (let j = 0; j < 3; j++) {
          count[e[j]] = (count[e[j]] + 4) ^ j;
          xors[e[j]] ^= k;
        }
        if ((k & (STEP - 1)) === STEP - 1) yield;
      }
      let queued = 0;
      for (let i = 0; i < size; i++) if (count[i] >> 2 === 1) alone[queued++] = i;
      peeled = 0;
      while (queued > 0) {
        const i = alone[--queued];
        if (count[i] >> 2 !== 1) continue;
        const k = xors[i];
        const j = count[i] & 3;
        order[peeled] = k;
        found[peeled++] = j;
        place(k, seed);
        for (let x = 0; x < 3; x++) {
          if (x === j) continue;
          const at = e[x];
          count[at] = (count[at] - 4) ^ x;
          xors[at] ^= k;
          if (count[at] >> 2 === 1) alone[queued++] = at;
        }
        if ((peeled & (STEP - 1)) === STEP - 1) yield;
      }
    }
    if (peeled < n) return null;
    table[s * SHARD_WORDS + 3] = seed;
    // In reverse order each key's entry is one no later key sets: the xor of its three is its fingerprint.
    for (let p = n - 1; p >= 0; p--) {
      place(order[p], seed);
      const j = found[p];
      const a = (first + e[(j + 1) % 3]) * 2;
      const b = (first + e[(j + 2) % 3]) * 2;
      const at = (first + e[j]) * 2;
      const v = (w[0] & 0xffff) ^ entries[a] ^ (entries[a + 1] << 8) ^ entries[b] ^ (entries[b + 1] << 8);
      entries[at] = v & 255;
      entries[at + 1] = v >>> 8;
      if ((p & (STEP - 1)) === 0) yield;
    }
  }
  return new FuseFilter(out.buffer as SharedArrayBuffer);
}

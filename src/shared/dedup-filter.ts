/**
 * A cuckoo filter over id-state keys (src/shared/dedup-key.ts): built once for each sealed partition of the id
 * state (and each group of them) by the partition maintenance, kept in PostgreSQL beside the partition, and
 * checked by the workers so that only the ids that hit a filter are probed in that partition
 * (docs/storage.md#deduplication). A miss is exact: the key is not in the partition. A key leaves a 16-bit
 * fingerprint in one of its two buckets of 8 bytes, so a check reads two of them; at 17 bits a key it lets
 * about 0.011% of other keys through, an eighth of what the blocked Bloom filter of format 2 let through at
 * 16 (docs/storage.md#filter-format), and every false positive is a probe in PostgreSQL.
 */
import { keyBits16 } from "./dedup-key";

/**
 * Fingerprints per bucket. A key's fingerprint sits in one of 4 slots of one of its two buckets, so a check
 * compares 8 slots: about 8 × load / 65,280 false positives, 0.011% at full load (docs/storage.md#filter-format).
 */
const SLOTS = 4;
/** The load a new filter is sized for: its keys fill this share of the slots (17 bits a key). */
const LOAD = 0.94;
/**
 * Bytes of a bucket of 14-bit fingerprints: the 4 slots' high bytes, then their low 6 bits packed into 24 bits
 * little-endian (slot i at bit 6i), so a check compares the high bytes first and reads the rest on a match.
 */
const FINE_BUCKET_BYTES = (SLOTS * 14) / 8;
/** Bytes of a bucket of 12-bit fingerprints: two pairs, each pair 24 bits little-endian. */
const MID_BUCKET_BYTES = (SLOTS * 12) / 8;
/** Evictions before an insertion gives up (DedupFilterFull): far beyond what LOAD needs. */
const MAX_KICKS = 4_000;
/** Header: the bucket count and the fingerprint width in bits (16 as built, 14, 12 or 8 once folded), little-endian. */
const HEADER_BYTES = 8;

/** An insertion found no free slot: the filter was sized too small for its keys, and must be built again larger. */
export class DedupFilterFull extends Error {
  constructor(buckets: number) {
    super(`a dedup filter of ${buckets} buckets has no room for another key`);
  }
}

/** murmur3's 32-bit finaliser: every bit of `h` reaches every bit of the result. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * The hashes of a key into `out` (4 words): out[0] picks its first bucket, out[1] and out[2] give its
 * fingerprint. Two independent mixes of all 128 bits, so structured ids spread too, and two keys share a
 * bucket and a fingerprint only by the chance of both (format 1 derived every bit from one 32-bit hash: in a
 * group of 4 million keys, 0.1% of other keys collided with one of them outright;
 * docs/storage.md#filter-format). Computed once per key, then checked against every filter (collectHits for a batch).
 */
export function hashKey(key: string, out: Uint32Array): void {
  // xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, its four 32-bit words read 4 digits at a time.
  const a = (keyBits16(key, 0) << 16) | keyBits16(key, 4);
  const b = (keyBits16(key, 9) << 16) | keyBits16(key, 14);
  const c = (keyBits16(key, 19) << 16) | keyBits16(key, 24);
  const d = (keyBits16(key, 28) << 16) | keyBits16(key, 32);
  hashWords(a, b, c, d, out);
}

/** hashKey of the key whose 16 bytes start at `at` (as a binary COPY gives them): the same hashes as its text. */
export function hashKeyBytes(bytes: Buffer, at: number, out: Uint32Array): void {
  hashWords(bytes.readInt32BE(at), bytes.readInt32BE(at + 4), bytes.readInt32BE(at + 8), bytes.readInt32BE(at + 12), out);
}

/** The hashes of a key from its four big-endian 32-bit words. */
function hashWords(a: number, b: number, c: number, d: number, out: Uint32Array): void {
  const h0 = fmix32(a ^ fmix32(b ^ fmix32(c ^ fmix32(d ^ 0x2545f491))));
  const h1 = fmix32(d ^ fmix32(c ^ fmix32(b ^ fmix32(a ^ 0x9e3779b9))));
  out[0] = h0;
  out[1] = h1;
  out[2] = fmix32(h0 ^ Math.imul(h1, 0x6a09e667));
  out[3] = fmix32(h1 ^ Math.imul(h0, 0x3c6ef372));
}

export class DedupFilter {
  /** Buckets of SLOTS fingerprints (the header's first word). */
  private readonly buckets: number;
  /** The fingerprints as built (16 bits), or null once folded. */
  private readonly wide: Uint16Array | null;
  /** The fingerprints folded to their 14 high bits (FINE_BUCKET_BYTES a bucket), or null. */
  private readonly fine: Uint8Array | null;
  /** The fingerprints folded to their 12 high bits, packed (MID_BUCKET_BYTES a bucket), or null. */
  private readonly mid: Uint8Array | null;
  /** The fingerprints folded to their high byte, or null. */
  private readonly narrow: Uint8Array | null;
  private readonly all: Uint8Array;
  /**
   * ALT_OFFSET[high] % buckets for each high byte: the other bucket without a division per check (a worker
   * checks every id against every filter it holds; docs/storage.md#what-it-costs-measured).
   */
  private readonly alt: Uint32Array;
  private readonly h = new Uint32Array(4);
  /** xorshift32 state: which slot an insertion evicts. */
  private seed = 0x9e3779b9;

  /**
   * An empty filter for `keys` keys, one read back from its bytes, or one over shared memory published by the
   * front thread. Always in shared memory, so the front can publish whatever it builds or reads.
   */
  constructor(keysOrBytes: number | Uint8Array | SharedArrayBuffer) {
    let all: Uint8Array;
    if (typeof keysOrBytes === "number") {
      all = emptyFilter(Math.max(1, Math.ceil(keysOrBytes / (SLOTS * LOAD))), 16);
    } else if (keysOrBytes instanceof SharedArrayBuffer) {
      all = new Uint8Array(keysOrBytes);
    } else {
      // Copied: the bytes of a query result need not be aligned.
      all = new Uint8Array(new SharedArrayBuffer(keysOrBytes.byteLength));
      all.set(keysOrBytes);
    }
    const header = new DataView(all.buffer, all.byteOffset, Math.min(all.byteLength, HEADER_BYTES));
    const buckets = all.byteLength >= HEADER_BYTES ? header.getUint32(0, true) : 0;
    const bits = all.byteLength >= HEADER_BYTES ? header.getUint32(4, true) : 0;
    if (
      buckets === 0 ||
      (bits !== 16 && bits !== 14 && bits !== 12 && bits !== 8) ||
      all.byteLength !== HEADER_BYTES + (buckets * SLOTS * bits) / 8
    ) {
      throw new Error(`not a dedup filter of format 3: ${all.byteLength} bytes, ${buckets} buckets of ${bits}-bit fingerprints`);
    }
    this.all = all;
    this.buckets = buckets;
    this.wide = bits === 16 ? new Uint16Array(all.buffer, all.byteOffset + HEADER_BYTES, buckets * SLOTS) : null;
    this.fine = bits === 14 ? new Uint8Array(all.buffer, all.byteOffset + HEADER_BYTES, buckets * FINE_BUCKET_BYTES) : null;
    this.mid = bits === 12 ? new Uint8Array(all.buffer, all.byteOffset + HEADER_BYTES, buckets * MID_BUCKET_BYTES) : null;
    this.narrow = bits === 8 ? new Uint8Array(all.buffer, all.byteOffset + HEADER_BYTES, buckets * SLOTS) : null;
    this.alt = altOffsets(buckets);
  }

  /** Its buckets: with a fingerprint's high byte, what places a key (a sealed group's filter is keyed by them; src/shared/fuse-filter.ts). */
  get bucketCount(): number {
    return this.buckets;
  }

  /** Its slots of 16-bit fingerprints (0: empty), bucket after bucket, as built; null once folded. */
  slotsAsBuilt(): Uint16Array | null {
    return this.wide;
  }

  /** The shared memory of a filter read back from its bytes (what the front publishes). */
  get shared(): SharedArrayBuffer {
    if (!(this.all.buffer instanceof SharedArrayBuffer)) throw new Error("this filter is not in shared memory");
    return this.all.buffer;
  }

  add(key: string): void {
    hashKey(key, this.h);
    this.addHashed(this.h);
  }

  /** add() of the key whose 16 bytes start at `at`. */
  addBytes(bytes: Buffer, at: number): void {
    hashKeyBytes(bytes, at, this.h);
    this.addHashed(this.h);
  }

  /**
   * addBytes() unless the filter already answers yes for the key: a key read twice takes no second slot. A yes
   * for another key's fingerprint stays a yes for this one (both entries live in the same two buckets).
   */
  addBytesOnce(bytes: Buffer, at: number): void {
    hashKeyBytes(bytes, at, this.h);
    if (!this.hasHashed(this.h)) this.addHashed(this.h);
  }

  /**
   * Cuckoo insertion: into a free slot of either bucket, else a fingerprint of the bucket is evicted to its
   * own other bucket, and so on. Throws DedupFilterFull when MAX_KICKS evictions found no room (the filter
   * then misses the key last evicted, and must be discarded).
   */
  private addHashed(h: Uint32Array): void {
    const slots = this.wide;
    if (slots === null) throw new Error("a folded filter takes no keys");
    let fp = fingerprint(h);
    let b = h[0] % this.buckets;
    if (this.put(slots, b, fp)) return;
    b = this.other(b, fp >>> 8);
    if (this.put(slots, b, fp)) return;
    for (let kick = 0; kick < MAX_KICKS; kick++) {
      let x = this.seed;
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.seed = x >>> 0;
      const s = b * SLOTS + (x & (SLOTS - 1));
      const evicted = slots[s];
      slots[s] = fp;
      fp = evicted;
      b = this.other(b, fp >>> 8);
      if (this.put(slots, b, fp)) return;
    }
    throw new DedupFilterFull(this.buckets);
  }

  private put(slots: Uint16Array, b: number, fp: number): boolean {
    const at = b * SLOTS;
    for (let s = at; s < at + SLOTS; s++) {
      if (slots[s] === 0) {
        slots[s] = fp;
        return true;
      }
    }
    return false;
  }

  /**
   * A fingerprint's other bucket, from its high byte alone, so that a folded filter (high bytes only) finds
   * it too: (offset - b) mod buckets, its own inverse, so either bucket leads to the other. A sealed group's
   * filter is keyed by the lower of the two (src/shared/fuse-filter.ts).
   */
  other(b: number, high: number): number {
    const o = this.alt[high] - b;
    return o < 0 ? o + this.buckets : o;
  }

  /** False: the key is certainly not in the filter's partition. */
  has(key: string): boolean {
    hashKey(key, this.h);
    return this.hasHashed(this.h);
  }

  /** has() for hashes from hashKey. */
  hasHashed(h: Uint32Array): boolean {
    return this.hasFingerprint(h[0], fingerprint(h));
  }

  /**
   * has() for a key's first hash word and its fingerprint (`fingerprint`), computed once per key when it is
   * checked against many filters; a worker checks a batch with collectHits, which calls this for 8-bit filters.
   */
  hasFingerprint(h0: number, fp: number): boolean {
    const b1 = h0 % this.buckets;
    const b2 = this.other(b1, fp >>> 8);
    const wide = this.wide;
    if (wide !== null) {
      let s = b1 * SLOTS;
      if (wide[s] === fp || wide[s + 1] === fp || wide[s + 2] === fp || wide[s + 3] === fp) return true;
      s = b2 * SLOTS;
      return wide[s] === fp || wide[s + 1] === fp || wide[s + 2] === fp || wide[s + 3] === fp;
    }
    const fine = this.fine;
    if (fine !== null) {
      const high = fp >>> 8;
      const low = (fp >>> 2) & 63;
      return fineHas(fine, b1 * FINE_BUCKET_BYTES, high, low) || fineHas(fine, b2 * FINE_BUCKET_BYTES, high, low);
    }
    const mid = this.mid;
    if (mid !== null) {
      const q = fp >>> 4;
      return midHas(mid, b1 * MID_BUCKET_BYTES, q) || midHas(mid, b2 * MID_BUCKET_BYTES, q);
    }
    const narrow = this.narrow!;
    const high = fp >>> 8;
    let s = b1 * SLOTS;
    if (narrow[s] === high || narrow[s + 1] === high || narrow[s + 2] === high || narrow[s + 3] === high) return true;
    s = b2 * SLOTS;
    return narrow[s] === high || narrow[s + 1] === high || narrow[s + 2] === high || narrow[s + 3] === high;
  }

  /**
   * Writes to `out` the index of each of the first `n` keys (given by their first hash word and fingerprint)
   * this filter may hold, and returns how many. What a worker calls once per filter for a whole batch: one
   * filter's loop over many keys issues the reads of several keys' buckets at once, where a check per key
   * waits for each filter's buckets in turn (both buckets are read before either is compared for the same
   * reason; docs/performance.md#daemon-cpu-per-event).
   */
  collectHits(h0s: Uint32Array, fps: Uint32Array, n: number, out: Uint32Array): number {
    const buckets = this.buckets;
    let hits = 0;
    const wide = this.wide;
    if (wide !== null) {
      for (let i = 0; i < n; i++) {
        const fp = fps[i];
        const b1 = h0s[i] % buckets;
        const b2 = this.other(b1, fp >>> 8);
        const s = b1 * SLOTS;
        const t = b2 * SLOTS;
        const a0 = wide[s],
          a1 = wide[s + 1],
          a2 = wide[s + 2],
          a3 = wide[s + 3];
        const c0 = wide[t],
          c1 = wide[t + 1],
          c2 = wide[t + 2],
          c3 = wide[t + 3];
        if (a0 === fp || a1 === fp || a2 === fp || a3 === fp || c0 === fp || c1 === fp || c2 === fp || c3 === fp) out[hits++] = i;
      }
      return hits;
    }
    const fine = this.fine;
    if (fine !== null) {
      for (let i = 0; i < n; i++) {
        const fp = fps[i];
        const high = fp >>> 8;
        const b1 = h0s[i] % buckets;
        const b2 = this.other(b1, high);
        const s = b1 * FINE_BUCKET_BYTES;
        const t = b2 * FINE_BUCKET_BYTES;
        const a0 = fine[s],
          a1 = fine[s + 1],
          a2 = fine[s + 2],
          a3 = fine[s + 3];
        const c0 = fine[t],
          c1 = fine[t + 1],
          c2 = fine[t + 2],
          c3 = fine[t + 3];
        // The high bytes match once in 255 a slot; only then are the low bits read.
        if (a0 === high || a1 === high || a2 === high || a3 === high || c0 === high || c1 === high || c2 === high || c3 === high) {
          const low = (fp >>> 2) & 63;
          if (fineHas(fine, s, high, low) || fineHas(fine, t, high, low)) out[hits++] = i;
        }
      }
      return hits;
    }
    const mid = this.mid;
    if (mid !== null) {
      for (let i = 0; i < n; i++) {
        const fp = fps[i];
        const q = fp >>> 4;
        const b1 = h0s[i] % buckets;
        const b2 = this.other(b1, fp >>> 8);
        const s = b1 * MID_BUCKET_BYTES;
        const t = b2 * MID_BUCKET_BYTES;
        const a = pair(mid, s);
        const a2 = pair(mid, s + 3);
        const c = pair(mid, t);
        const c2 = pair(mid, t + 3);
        if (
          (a & 0xfff) === q ||
          a >>> 12 === q ||
          (a2 & 0xfff) === q ||
          a2 >>> 12 === q ||
          (c & 0xfff) === q ||
          c >>> 12 === q ||
          (c2 & 0xfff) === q ||
          c2 >>> 12 === q
        )
          out[hits++] = i;
      }
      return hits;
    }
    for (let i = 0; i < n; i++) if (this.hasFingerprint(h0s[i], fps[i])) out[hits++] = i;
    return hits;
  }

  /**
   * How many more keys fit at the load a filter is sized for (LOAD): a group's filter takes each newly sealed
   * generation while this says its keys fit (docs/storage.md#the-window-and-the-id-state). One pass over the slots.
   */
  roomLeft(): number {
    const slots = this.wide;
    if (slots === null) return 0;
    let used = 0;
    for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) used++;
    return Math.floor(slots.length * LOAD) - used;
  }

  /** The width of its fingerprints: 16 as built, 14, 12 or 8 once folded. */
  get bits(): number {
    return this.wide !== null ? 16 : this.fine !== null ? 14 : this.mid !== null ? 12 : 8;
  }

  /** Whether fold() can narrow it further: down to 8 bits. */
  get foldable(): boolean {
    return this.narrow === null;
  }

  /** Whether it takes keys (add): only as built, with 16-bit fingerprints. */
  get takesKeys(): boolean {
    return this.wide !== null;
  }

  /**
   * The same keys in less memory, in a new SharedArrayBuffer, each fingerprint cut to fewer of its high bits in
   * the same slot: from 16 to 14 (an eighth less memory; 8 slots of 16,320 values: about 0.046% false
   * positives), from 14 to 12 (a quarter less than as built; 4,080 values: about 0.18%), from 12 to its high
   * byte (half; 255 values: about 2.9%). A key's buckets follow from its hash and that byte alone, so every key
   * this filter holds is still found (docs/storage.md#filter-memory).
   */
  fold(): DedupFilter {
    const wide = this.wide;
    const fine = this.fine;
    const mid = this.mid;
    if (wide !== null) {
      const out = emptyFilter(this.buckets, 14);
      for (let b = 0, s = 0, o = HEADER_BYTES; b < this.buckets; b++, s += SLOTS, o += FINE_BUCKET_BYTES) {
        let lows = 0;
        for (let i = 0; i < SLOTS; i++) {
          out[o + i] = wide[s + i] >>> 8;
          lows |= ((wide[s + i] >>> 2) & 63) << (6 * i);
        }
        putPair(out, o + SLOTS, lows);
      }
      return new DedupFilter(out.buffer as SharedArrayBuffer);
    }
    if (fine !== null) {
      const out = emptyFilter(this.buckets, 12);
      for (let b = 0, f = 0, o = HEADER_BYTES; b < this.buckets; b++, f += FINE_BUCKET_BYTES, o += MID_BUCKET_BYTES) {
        const lows = pair(fine, f + SLOTS);
        putPair(out, o, fineTo12(fine, f, lows, 0) | (fineTo12(fine, f, lows, 1) << 12));
        putPair(out, o + 3, fineTo12(fine, f, lows, 2) | (fineTo12(fine, f, lows, 3) << 12));
      }
      return new DedupFilter(out.buffer as SharedArrayBuffer);
    }
    if (mid !== null) {
      const out = emptyFilter(this.buckets, 8);
      for (let b = 0, o = 0, s = HEADER_BYTES; b < this.buckets; b++, o += MID_BUCKET_BYTES, s += SLOTS) {
        const lo = pair(mid, o);
        const hi = pair(mid, o + 3);
        out[s] = (lo & 0xfff) >>> 4;
        out[s + 1] = lo >>> 16;
        out[s + 2] = (hi & 0xfff) >>> 4;
        out[s + 3] = hi >>> 16;
      }
      return new DedupFilter(out.buffer as SharedArrayBuffer);
    }
    throw new Error("a filter of 8-bit fingerprints cannot be folded again");
  }

  /** The filter's bytes as a Buffer over the same memory (no copy; node-postgres sends a Buffer in binary). */
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

/** Whether the bucket of 14-bit fingerprints at `at` holds the one of high byte `high` and low bits `low`. */
function fineHas(m: Uint8Array, at: number, high: number, low: number): boolean {
  // The high bytes first: a slot matches there once in 255, and only then are the low bits read.
  if (m[at] !== high && m[at + 1] !== high && m[at + 2] !== high && m[at + 3] !== high) return false;
  const lows = pair(m, at + SLOTS);
  for (let i = 0; i < SLOTS; i++) if (m[at + i] === high && ((lows >>> (6 * i)) & 63) === low) return true;
  return false;
}

/** Slot `i`'s 12 high bits in the bucket of 14-bit fingerprints at `at` (`lows` its packed low bits). */
function fineTo12(m: Uint8Array, at: number, lows: number, i: number): number {
  return (m[at + i] << 4) | (((lows >>> (6 * i)) & 63) >>> 2);
}

/** 24 bits little-endian at `at`: two 12-bit fingerprints (the first in the low 12 bits), or four 6-bit lows. */
function pair(m: Uint8Array, at: number): number {
  return m[at] | (m[at + 1] << 8) | (m[at + 2] << 16);
}

function putPair(m: Uint8Array, at: number, v: number): void {
  m[at] = v & 255;
  m[at + 1] = (v >>> 8) & 255;
  m[at + 2] = v >>> 16;
}

/** Whether the bucket of 12-bit fingerprints at `at` holds `q`. */
function midHas(m: Uint8Array, at: number, q: number): boolean {
  const lo = pair(m, at);
  if ((lo & 0xfff) === q || lo >>> 12 === q) return true;
  const hi = pair(m, at + 3);
  return (hi & 0xfff) === q || hi >>> 12 === q;
}

/**
 * The bytes of an empty filter of `buckets` buckets of `bits`-bit fingerprints, its header written (the one
 * place the header is laid out), in shared memory, as the front publishes filters.
 */
function emptyFilter(buckets: number, bits: 8 | 12 | 14 | 16): Uint8Array {
  const all = new Uint8Array(new SharedArrayBuffer(HEADER_BYTES + (buckets * SLOTS * bits) / 8));
  const header = new DataView(all.buffer);
  header.setUint32(0, buckets, true);
  header.setUint32(4, bits, true);
  return all;
}

/**
 * A key's 16-bit fingerprint, never 0 (an empty slot): its high byte 1..255 (what a folded filter keeps, and
 * what picks the other bucket), its low byte from another hash word.
 */
export function fingerprint(h: Uint32Array): number {
  return ((1 + (h[1] % 255)) << 8) | (h[2] & 255);
}

/** The offset of the other bucket for each high byte (DedupFilter.other). */
const ALT_OFFSET = Uint32Array.from({ length: 256 }, (_, i) => fmix32(Math.imul(i + 1, 0x5bd1e995)));

/**
 * For a filter of `buckets` buckets, the offset of a fingerprint's other bucket by its high byte: the other of
 * bucket b is (offset - b) mod buckets.
 */
export function altOffsets(buckets: number): Uint32Array {
  return ALT_OFFSET.map((o) => o % buckets);
}

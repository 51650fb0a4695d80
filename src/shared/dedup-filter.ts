/**
 * A blocked Bloom filter over id-state keys (src/shared/dedup-key.ts): built once for each sealed partition of
 * the id state by the partition maintenance, kept in PostgreSQL beside the partition, and checked by the
 * workers so that only the ids that hit a filter are probed in that partition (docs/storage.md#deduplication).
 * A miss is exact: the key is not in the partition. Each key sets PROBES bits of one 512-bit block (one cache
 * line), so a check costs one memory access per filter.
 */

/**
 * Bits of filter per key: about 0.08% false positives with PROBES bits in 512-bit blocks, what the blocks'
 * uneven load allows (0.087% computed; a plain Bloom filter of 16 bits a key would reach 0.05% with ten cache
 * misses a check). Every false positive is a probe in PostgreSQL, and a key is checked against every sealed
 * generation's filter or its group's (docs/storage.md#filter-format).
 */
export const FILTER_BITS_PER_KEY = 16;
const PROBES = 8;
const BLOCK_WORDS = 16;
/** Where probe i takes its 9 bits: the hash word (out[1..3] of hashKey) and the shift within it. */
const PROBE_WORD = Uint8Array.of(1, 1, 1, 2, 2, 2, 3, 3);
const PROBE_SHIFT = Uint8Array.of(0, 9, 18, 0, 9, 18, 0, 9);
/**
 * A new filter's block count is a multiple of this, so it can be folded in half (fold()) up to log2 of it
 * times; at most 63 blocks (4 KiB) more than the keys need.
 */
const BLOCK_MULTIPLE = 64;

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The value of a lowercase hex digit's char code (canonical keys only hold 0-9 and a-f). */
function hex(c: number): number {
  return c <= 57 ? c - 48 : c - 87;
}

/** 32 bits of a canonical UUID from its 8 hex digits starting at `at`, skipping a hyphen. */
function word(key: string, at: number): number {
  let w = 0;
  for (let i = at, n = 0; n < 8; i++) {
    const c = key.charCodeAt(i);
    if (c === 45) continue;
    w = (w << 4) | hex(c);
    n++;
  }
  return w;
}

/**
 * The block and probe hashes of a key into `out` (4 words): out[0] picks the block, out[1..3] give the bits.
 * Two independent mixes of all 128 bits, so structured ids spread too, and two keys share a block and its bits
 * only when 64 bits of hash agree (format 1 derived every word from one 32-bit hash: in a group of 4 million
 * keys, 0.1% of other keys collided with one of them outright, on top of the filter's own rate; measured 0.29%
 * false positives against 0.08% now, docs/storage.md#filter-format). Computed once per key, then checked
 * against every filter with hasHashed.
 */
export function hashKey(key: string, out: Uint32Array): void {
  // xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
  hashWords(word(key, 0), word(key, 9), word(key, 19), word(key, 28), out);
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
  private readonly words: Uint32Array;
  private readonly blocks: number;
  private readonly h = new Uint32Array(4);

  /**
   * An empty filter for `keys` keys, one read back from its bytes (copied into shared memory, so the front
   * thread can publish it to the workers), or one over shared words published that way.
   */
  constructor(keysOrBytes: number | Uint8Array | SharedArrayBuffer) {
    if (typeof keysOrBytes === "number") {
      const blocks = Math.ceil(Math.max(1, (keysOrBytes * FILTER_BITS_PER_KEY) / 512) / BLOCK_MULTIPLE) * BLOCK_MULTIPLE;
      this.words = new Uint32Array(blocks * BLOCK_WORDS);
    } else if (keysOrBytes instanceof SharedArrayBuffer) {
      this.words = new Uint32Array(keysOrBytes);
    } else {
      if (keysOrBytes.byteLength === 0 || keysOrBytes.byteLength % (BLOCK_WORDS * 4) !== 0) {
        throw new Error(`a dedup filter is a whole number of 64-byte blocks, got ${keysOrBytes.byteLength} bytes`);
      }
      // Copied: the bytes of a query result need not be 4-byte aligned.
      this.words = new Uint32Array(new SharedArrayBuffer(keysOrBytes.byteLength));
      new Uint8Array(this.words.buffer).set(keysOrBytes);
    }
    this.blocks = this.words.length / BLOCK_WORDS;
  }

  /** The shared words of a filter read back from its bytes (what the front publishes). */
  get shared(): SharedArrayBuffer {
    if (!(this.words.buffer instanceof SharedArrayBuffer)) throw new Error("this filter is not in shared memory");
    return this.words.buffer;
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

  private addHashed(h: Uint32Array): void {
    const base = (h[0] % this.blocks) * BLOCK_WORDS;
    for (let i = 0; i < PROBES; i++) {
      const b = (h[PROBE_WORD[i]] >>> PROBE_SHIFT[i]) & 511;
      this.words[base + (b >>> 5)] |= 1 << (b & 31);
    }
  }

  /** False: the key is certainly not in the filter's partition. */
  has(key: string): boolean {
    hashKey(key, this.h);
    return this.hasHashed(this.h);
  }

  /** has() for hashes from hashKey. */
  hasHashed(h: Uint32Array): boolean {
    const base = (h[0] % this.blocks) * BLOCK_WORDS;
    for (let i = 0; i < PROBES; i++) {
      const b = (h[PROBE_WORD[i]] >>> PROBE_SHIFT[i]) & 511;
      if ((this.words[base + (b >>> 5)] & (1 << (b & 31))) === 0) return false;
    }
    return true;
  }

  /** Whether fold() can halve this filter (an even number of blocks). */
  get foldable(): boolean {
    return this.blocks % 2 === 0;
  }

  /**
   * The same keys in half the memory, in a new SharedArrayBuffer: block j of the result is blocks j and
   * j + blocks/2 OR-ed together. A key's block is h % blocks; h % (blocks/2) is the same as that block's index
   * modulo blocks/2, and the bits within a block do not move, so every key this filter holds is still found
   * (docs/storage.md#filter-memory). Twice the keys per bit: at 8 bits per key about 2.5% false positives.
   */
  fold(): DedupFilter {
    if (!this.foldable) throw new Error(`a filter of ${this.blocks} blocks cannot be folded in half`);
    const half = this.words.length / 2;
    const out = new Uint32Array(new SharedArrayBuffer(half * 4));
    for (let i = 0; i < half; i++) out[i] = this.words[i] | this.words[i + half];
    return new DedupFilter(out.buffer as SharedArrayBuffer);
  }

  /** The filter's bytes as a Buffer over the same memory (no copy; node-postgres sends a Buffer in binary). */
  buffer(): Buffer {
    return Buffer.from(this.words.buffer, this.words.byteOffset, this.words.byteLength);
  }

  bytes(): Uint8Array {
    return new Uint8Array(this.words.buffer, this.words.byteOffset, this.words.byteLength);
  }

  get byteLength(): number {
    return this.words.byteLength;
  }
}

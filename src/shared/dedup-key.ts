/**
 * The fixed-width key an event id is remembered by in the id state (docs/storage.md#deduplication): the id
 * itself when it is a canonical (lowercase, hyphenated) UUID, else the first 128 bits of its SHA-256 written
 * as a UUID. A 16-byte `uuid` compares as bytes (no collation), and makes the id state's index about half the
 * size of a text one; deduplication stays by id alone.
 */
import { createHash } from "node:crypto";

export function dedupKey(id: string): string {
  if (isCanonicalUuid(id)) return id;
  const hex = createHash("sha256").update(id, "utf8").digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The same key computed by PostgreSQL from a text expression (migration of an old id table, tests). */
export function dedupKeySql(textExpr: string): string {
  return `(CASE WHEN ${textExpr} ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN (${textExpr})::uuid
    ELSE encode(substring(sha256(convert_to(${textExpr}, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid END)`;
}

/** Value of each hex digit's char code (lowercase only: keys are canonical), -1 for anything else. */
const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) HEX_VALUE["0123456789abcdef".charCodeAt(i)] = i;
/** Positions of the 32 hex digits in a canonical UUID string. */
const HEX_POSITIONS = [...Array(36).keys()].filter((i) => i !== 8 && i !== 13 && i !== 18 && i !== 23);

/**
 * Lowercase hex digits with hyphens at 8, 13, 18 and 23: a char-code loop, where the regular expression it
 * replaced cost a worker ~180 ns an id (docs/performance.md#daemon-cpu-per-event).
 */
export function isCanonicalUuid(id: string): boolean {
  if (id.length !== 36) return false;
  if (id.charCodeAt(8) !== 45 || id.charCodeAt(13) !== 45 || id.charCodeAt(18) !== 45 || id.charCodeAt(23) !== 45) return false;
  for (let i = 0; i < 32; i++) {
    const c = id.charCodeAt(HEX_POSITIONS[i]);
    if (c > 127 || HEX_VALUE[c] < 0) return false;
  }
  return true;
}

/** Writes a key (dedupKey's canonical UUID string) as its 16 bytes at `offset`, without allocating. */
export function writeKeyBytes(key: string, buf: Uint8Array, offset: number): void {
  for (let b = 0; b < 16; b++) {
    const hi = HEX_VALUE[key.charCodeAt(HEX_POSITIONS[2 * b])];
    const lo = HEX_VALUE[key.charCodeAt(HEX_POSITIONS[2 * b + 1])];
    if (hi < 0 || lo < 0) throw new Error(`not a canonical UUID key: ${key}`);
    buf[offset + b] = (hi << 4) | lo;
  }
}

/**
 * 16 bits of a canonical key from its 4 hex digits starting at `at` (no check: keys are canonical). Reading a
 * key 4 fixed digits at a time, where a loop skipping the hyphens cost ~200 ns a key for its 128 bits, takes
 * ~70 with the hashing (docs/performance.md#daemon-cpu-per-event).
 */
export function keyBits16(key: string, at: number): number {
  const v = HEX_VALUE;
  return (v[key.charCodeAt(at)] << 12) | (v[key.charCodeAt(at + 1)] << 8) | (v[key.charCodeAt(at + 2)] << 4) | v[key.charCodeAt(at + 3)];
}

/** A key's first 32 bits, unsigned: what its bytes sort by first. */
export function keyPrefix(key: string): number {
  return ((keyBits16(key, 0) << 16) | keyBits16(key, 4)) >>> 0;
}

/**
 * The fixed-width key an event id is remembered by in the id state (docs/storage.md#deduplication): the id
 * itself when it is a canonical (lowercase, hyphenated) UUID, else the first 128 bits of its SHA-256 written
 * as a UUID. A 16-byte `uuid` compares as bytes (no collation), and makes the id state's index about half the
 * size of a text one; deduplication stays by id alone.
 */
import { createHash } from "node:crypto";

const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function dedupKey(id: string): string {
  if (id.length === 36 && CANONICAL_UUID.test(id)) return id;
  const hex = createHash("sha256").update(id, "utf8").digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The same key computed by PostgreSQL from a text expression (migration of an old id table, tests). */
export function dedupKeySql(textExpr: string): string {
  return `(CASE WHEN ${textExpr} ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN (${textExpr})::uuid
    ELSE encode(substring(sha256(convert_to(${textExpr}, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid END)`;
}

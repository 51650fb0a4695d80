import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { test } from "node:test";
import { hashKey, hashKeyBytes } from "../src/shared/dedup-filter";
import { dedupKey, isCanonicalUuid, keyBits16, keyPrefix, writeKeyBytes } from "../src/shared/dedup-key";
import { keyRows } from "../workers/commit/id-claim";

const CANONICAL = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

test("an id is its own key exactly when it is a canonical UUID; any other id is keyed by its SHA-256", () => {
  const u = "0f8fad5b-d9cb-469f-a165-70867728950e";
  const others = [
    u.toUpperCase(),
    u.replace(/-/g, ""),
    `${u} `,
    u.slice(0, 35),
    u.replace("-", "_"),
    "0f8fad5b-d9cb-469f-a165-70867728950g",
    "0f8fad5bd-9cb-469f-a165-70867728950e",
    "0f8fad5b-d9cb-469f-a165-70867728950\u00e9",
    "0f8fad5b-d9cb-469f-a165-7086772895\ud83d\ude00",
    "------------------------------------",
    "",
    "order-42",
  ];
  for (const id of [u, randomUUID(), ...others]) {
    assert.equal(isCanonicalUuid(id), CANONICAL.test(id), JSON.stringify(id));
  }
  assert.equal(dedupKey(u), u);
  for (const id of others) {
    const hex = createHash("sha256").update(id, "utf8").digest("hex");
    assert.equal(dedupKey(id).replace(/-/g, ""), hex.slice(0, 32), JSON.stringify(id));
    assert.ok(isCanonicalUuid(dedupKey(id)));
  }
});

test("a key hashes the same from its text as from its 16 bytes, and its bits read from the text are its bytes'", () => {
  const keys = [
    ...Array.from({ length: 2_000 }, () => randomUUID()),
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
  ];
  const bytes = Buffer.alloc(16);
  const fromText = new Uint32Array(4);
  const fromBytes = new Uint32Array(4);
  for (const key of keys) {
    writeKeyBytes(key, bytes, 0);
    assert.equal(bytes.toString("hex"), key.replace(/-/g, ""));
    hashKey(key, fromText);
    hashKeyBytes(bytes, 0, fromBytes);
    assert.deepEqual(fromText, fromBytes, key);
    assert.equal(keyPrefix(key), bytes.readUInt32BE(0), key);
    assert.equal(keyBits16(key, 32), bytes.readUInt16BE(14), key);
  }
});

/** keyRows as it was written first: the strings sorted, each row written with the Buffer methods. */
function referenceRows(keys: readonly string[], gen: number): Buffer {
  const sorted = keys.slice().sort();
  const header = Buffer.from([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
  const buf = Buffer.alloc(header.length + sorted.length * 30 + 2);
  header.copy(buf, 0);
  let o = header.length;
  for (const key of sorted) {
    buf.writeInt16BE(2, o);
    buf.writeInt32BE(16, o + 2);
    writeKeyBytes(key, buf, o + 6);
    buf.writeInt32BE(4, o + 22);
    buf.writeInt32BE(gen, o + 26);
    o += 30;
  }
  buf.writeInt16BE(-1, o);
  return buf;
}

test("a claim's COPY rows hold the keys in byte order, whatever their order in the batch, ties on the first 32 bits included", () => {
  const random = Array.from({ length: 5_000 }, () => randomUUID());
  // Keys sharing their first 8 hex digits (sorted by the rest), repeated keys, and the extremes.
  const shared = Array.from({ length: 300 }, () => `abcdef01-${randomUUID().slice(9)}`);
  const repeated = [random[3], random[3], shared[5], shared[5], shared[5]];
  const edges = ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", "ffffffff-0000-0000-0000-000000000000"];
  const batches = [[], [random[0]], random, [...shared, ...random.slice(0, 200), ...repeated, ...edges].sort(() => Math.random() - 0.5)];
  for (const keys of batches) {
    for (const gen of [1, 70_000, 2 ** 31 - 1]) {
      assert.ok(keyRows(keys, gen).equals(referenceRows(keys, gen)), `${keys.length} keys, generation ${gen}`);
    }
  }
});

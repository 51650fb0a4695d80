/**
 * The producer client's spool file on its own (the end-to-end kill-and-restart run is in
 * producer-client.test.ts): frames survive a reopen, acks trim them, a torn or garbage tail is ignored,
 * renumbering survives a reopen.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { Spool } from "../src/client/spool";

const frame = (seq: number) => ({ seq, count: 2, text: `{"n":${seq}}\n{"n":${seq}.5}`, bytes: 20 });

test("spool: frames survive a reopen, acks trim them, a torn tail is ignored, renumbering sticks", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-spool-unit-"));
  try {
    let spool = await Spool.open(dir, 1 << 20, "frame");
    assert.deepEqual(spool.pending, []);
    for (let s = 1; s <= 4; s++) await spool.append(frame(s));
    await spool.ack(2);
    await spool.close();
    // A process killed mid-append: half an entry, then garbage.
    fs.appendFileSync(path.join(dir, "spool.log"), Buffer.from([40, 0, 0, 0, 1, 2, 3, 4, 1, 123, 34]));
    spool = await Spool.open(dir, 1 << 20, "frame");
    assert.deepEqual(
      spool.pending.map((f) => [f.seq, f.text]),
      [
        [3, frame(3).text],
        [4, frame(4).text],
      ],
    );
    await spool.renumber(10);
    await spool.append(frame(12));
    await spool.close();
    spool = await Spool.open(dir, 1 << 20, "none");
    assert.deepEqual(
      spool.pending.map((f) => f.seq),
      [10, 11, 12],
    );
    await spool.ack(12);
    await spool.close();
    spool = await Spool.open(dir, 1 << 20, "frame");
    assert.deepEqual(spool.pending, []);
    await spool.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { BatchRows } from "../workers/commit/batch-rows";
import { CopyRows } from "../workers/records/copy-rows";

// Rows of 1- to 4-byte UTF-8 characters, and an empty text column, as a worker encodes them.
const taskA = ["a\tplain\n", "b\tcafé\n", "c\t\\N\n"];
const taskB = ["d\t日本語\n"];
const taskC = ["e\t🙂 emoji\n", "f\t\n", "g\tend\n"];

test("a task's rows held as bytes give back each row, and any run of them as the COPY text of that run", () => {
  const rows = CopyRows.encode(taskA);
  assert.equal(rows.length, 3);
  assert.equal(rows.bytes.length, Buffer.byteLength(taskA.join("")));
  for (let i = 0; i < taskA.length; i++) assert.equal(rows.text(i), taskA[i]);
  for (let from = 0; from <= 3; from++) {
    for (let to = from; to <= 3; to++) assert.equal(rows.payload(from, to).toString(), taskA.slice(from, to).join(""), `[${from}, ${to})`);
  }
  assert.equal(CopyRows.encode([]).payload().length, 0);
});

test("a batch's rows: any run across its tasks is the COPY text of those rows in order; picked rows keep their order", () => {
  const batch = new BatchRows();
  assert.equal(batch.add(CopyRows.encode(taskA)), 0);
  assert.equal(batch.add(CopyRows.encode([])), 3, "a task with no rows of this target takes no batch row");
  assert.equal(batch.add(CopyRows.encode(taskB)), 3);
  assert.equal(batch.add(CopyRows.encode(taskC)), 4);
  const all = [...taskA, ...taskB, ...taskC];
  assert.equal(batch.length, all.length);
  for (let i = 0; i < all.length; i++) assert.equal(batch.text(i), all[i], `row ${i}`);
  for (let from = 0; from <= all.length; from++) {
    for (let to = from; to <= all.length; to++) {
      assert.equal(batch.payload(from, to).toString(), all.slice(from, to).join(""), `[${from}, ${to})`);
    }
  }
  const kept = [0, 2, 3, 5, 6];
  const picked = CopyRows.pick(batch, kept);
  assert.equal(picked.length, kept.length);
  assert.equal(picked.payload().toString(), kept.map((i) => all[i]).join(""));
  assert.equal(picked.text(2), all[3]);
});

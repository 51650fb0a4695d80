/**
 * collectGarbageSoon (src/ops/heap-collection.ts): the front thread asks for a full collection after the
 * filters' memory changed hands, so that buffers it let go of are freed then rather than at its next full
 * collection (docs/performance.md#memory). Run in a child process, so that this runner's heap plays no part.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

const MODULE = path.join(__dirname, "../src/ops/heap-collection.js");

test("a buffer dropped after it reached the old generation is freed once the collection asked for has run, and no ExperimentalWarning is printed", async () => {
  const script = `
    const { collectGarbageSoon } = require(${JSON.stringify(MODULE)});
    const ab = () => process.memoryUsage().arrayBuffers / 1048576;
    let big = new SharedArrayBuffer(64 * 1048576);
    new Uint8Array(big).fill(1);
    // Scavenges enough to move it to the old generation, as a filter held for a while is.
    let keep = [];
    for (let i = 0; i < 200000; i++) keep.push({ i, s: "x" + i });
    keep = null;
    big = null;
    const before = ab();
    (async () => {
      await collectGarbageSoon();
      await collectGarbageSoon();
      console.log(JSON.stringify({ before, after: ab() }));
    })();`;
  const { stdout, stderr } = await promisify(execFile)(process.execPath, ["--max-semi-space-size=1", "-e", script]);
  const { before, after } = JSON.parse(stdout.trim());
  assert.ok(before >= 64, `the buffer counted before: ${before} MiB`);
  assert.ok(after < before - 60, `freed: ${before} MiB of array buffers before, ${after} after`);
  assert.equal(stderr, "", "nothing on stderr (the daemon's output is JSON log lines)");
});

/**
 * The HdrHistogram interval log at HLOG_PATH: written while traffic flows, completed on SIGTERM, and read
 * back with hdr-histogram-js's own HistogramLogReader (what other HdrHistogram tools read as well).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import * as hdr from "hdr-histogram-js";
import { useTestDb } from "./fixture";
import { waitFor } from "./harness";
import { sendEvents, sleep } from "./ops-tools";

/** A database; each test starts its daemon with HLOG_PATH in a temporary directory. */
const fx = useTestDb();
let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-hlog-"));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const file = () => path.join(dir, "latency.hlog");

test("HLOG_PATH: interval histograms with the ack stage's counts parse back with HistogramLogReader", async () => {
  const startedAt = Date.now();
  const daemon = await fx.startDaemon({ env: { HLOG_PATH: file() } });
  let requests = 0;
  try {
    // Three rounds over about three one-second intervals, so the log holds more than one interval.
    for (let round = 0; round < 3; round++) {
      await sendEvents(daemon.base, `hlog-${round}`, 10, 5);
      requests += 10;
      await sleep(1000);
    }
  } finally {
    const { code } = await daemon.stop();
    assert.equal(code, 0, "SIGTERM exits 0");
  }
  const stoppedAt = Date.now();

  const text = fs.readFileSync(file(), "utf8");
  assert.match(text, /^#\[StartTime: \d+(\.\d+)? /m, "StartTime header");
  assert.match(text, /^"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"$/m, "legend");
  assert.deepEqual(hdr.listTags(text).sort(), ["ack.events", "commit.events", "receive.events", "validate.events"]);

  const reader = new hdr.HistogramLogReader(text);
  const byTag = new Map<string, { intervals: number; count: number; max: number }>();
  for (let h = reader.nextIntervalHistogram(); h !== null; h = reader.nextIntervalHistogram()) {
    const entry = byTag.get(h.tag) ?? { intervals: 0, count: 0, max: 0 };
    entry.intervals++;
    entry.count += h.totalCount;
    entry.max = Math.max(entry.max, h.maxValue);
    byTag.set(h.tag, entry);
    // Absolute interval times (baseTime + offset) fall inside the run.
    assert.ok(
      h.startTimeStampMsec >= startedAt - 1000 && h.endTimeStampMsec <= stoppedAt + 1000,
      `interval ${h.startTimeStampMsec}..${h.endTimeStampMsec} in run`,
    );
    assert.ok(h.endTimeStampMsec >= h.startTimeStampMsec);
  }
  // The reader parses the StartTime header lazily, with the first interval.
  assert.ok(
    reader.startTimeSec * 1000 >= startedAt - 1000 && reader.startTimeSec * 1000 <= stoppedAt,
    `start time ${reader.startTimeSec} is in this run`,
  );
  const ack = byTag.get("ack.events");
  assert.ok(ack, `ack.events in ${[...byTag.keys()]}`);
  assert.ok(ack.intervals >= 2, `several intervals: ${ack.intervals}`);
  // Every acknowledged request is in the log exactly once, the last interval included (flushed on stop).
  assert.equal(ack.count, requests);
  assert.ok(ack.max > 0 && ack.max < 60_000_000, `ack max ${ack.max} µs is plausible`);
  for (const stage of ["receive", "validate", "commit"]) assert.equal(byTag.get(`${stage}.events`)?.count, requests, stage);
});

test("a second run appends to the same log and its intervals keep their own times", async () => {
  const firstRun = new hdr.HistogramLogReader(fs.readFileSync(file(), "utf8"));
  let firstCount = 0;
  let firstEnd = 0;
  for (let h = firstRun.nextIntervalHistogram(); h !== null; h = firstRun.nextIntervalHistogram()) {
    if (h.tag === "ack.events") firstCount += h.totalCount;
    firstEnd = Math.max(firstEnd, h.endTimeStampMsec);
  }
  const startedAt = Date.now();
  const daemon = await fx.startDaemon({ env: { HLOG_PATH: file() } });
  try {
    await sendEvents(daemon.base, "hlog-again", 7, 5);
  } finally {
    assert.equal((await daemon.stop()).code, 0);
  }
  const text = fs.readFileSync(file(), "utf8");
  assert.equal(text.match(/^#\[StartTime: /gm)?.length, 2, "one header per run");
  const reader = new hdr.HistogramLogReader(text);
  let secondCount = 0;
  let total = 0;
  for (let h = reader.nextIntervalHistogram(); h !== null; h = reader.nextIntervalHistogram()) {
    if (h.tag !== "ack.events") continue;
    total += h.totalCount;
    // Intervals of the second run are placed after it started, not at the first run's offsets.
    if (h.startTimeStampMsec >= startedAt - 1000) secondCount += h.totalCount;
    else assert.ok(h.endTimeStampMsec <= firstEnd, "an interval of the first run");
  }
  assert.equal(secondCount, 7);
  assert.equal(total, firstCount + 7);
});

test("SIGHUP reopens HLOG_PATH (logrotate): the moved file and the new one each read back on their own, no interval lost", async () => {
  const live = path.join(dir, "rotated.hlog");
  const moved = `${live}.1`;
  const daemon = await fx.startDaemon({ env: { HLOG_PATH: live } });
  try {
    await sendEvents(daemon.base, "hlog-rot-a", 6, 5);
    await sleep(1300); // one interval boundary (1 s) past the traffic, so it is in the file being moved
    fs.renameSync(live, moved);
    daemon.child.kill("SIGHUP");
    await waitFor("the reopened log", () => fs.existsSync(live) || null);
    await sendEvents(daemon.base, "hlog-rot-b", 4, 5);
  } finally {
    assert.equal((await daemon.stop()).code, 0);
  }
  const ackCount = (file: string) => {
    const reader = new hdr.HistogramLogReader(fs.readFileSync(file, "utf8"));
    let n = 0;
    for (let h = reader.nextIntervalHistogram(); h !== null; h = reader.nextIntervalHistogram())
      if (h.tag === "ack.events") n += h.totalCount;
    return n;
  };
  assert.match(fs.readFileSync(live, "utf8"), /^#\[StartTime: /m, "the new file has its own header");
  // Intervals written between the rename and the reopen still land in the moved file (same descriptor).
  assert.equal(ackCount(moved) + ackCount(live), 10);
  assert.ok(ackCount(moved) >= 6, `the moved file holds the first traffic: ${ackCount(moved)}`);
});

/**
 * The thread that hashes the open generation's keys into its filters (src/storage/filter-fill.ts): the front
 * thread only reads the keys from PostgreSQL and passes them on, so its sockets never wait on the hashing
 * (docs/performance.md#latency-under-paced-load). The filters are the front's, in shared memory; it reads them
 * only once a settle has answered, after every batch sent before it.
 */
import { parentPort, workerData } from "node:worker_threads";
import { DedupFilter, DedupFilterFull } from "../shared/dedup-filter";
import { type FillMessage, type FillReply, KEY_BYTES } from "./filter-fill-protocol";

const settled = new Int32Array(workerData as SharedArrayBuffer);
/** The fill the last keys were of, and whether one of its filters had no room (a failed read never settles its fill). */
let fill = 0;
let full = false;

parentPort!.on("message", (m: FillMessage) => {
  if (m.type === "settle") {
    // Published with a release store: the front's acquire load of it sees every slot written before.
    Atomics.store(settled, 0, m.seq);
    const reply: FillReply = { seq: m.seq, full: m.fill === fill && full };
    parentPort!.postMessage(reply);
    return;
  }
  if (m.fill !== fill) {
    fill = m.fill;
    full = false;
  }
  if (full) return; // a filter filled: discarded whole by the front, keys after it change nothing
  const filters = m.filters.map((f) => new DedupFilter(f));
  const keys = Buffer.from(m.keys, 0, m.n * KEY_BYTES);
  try {
    for (let at = 0; at < keys.length; at += KEY_BYTES) for (const f of filters) f.addBytesOnce(keys, at);
  } catch (err) {
    if (!(err instanceof DedupFilterFull)) throw err;
    full = true;
  }
});

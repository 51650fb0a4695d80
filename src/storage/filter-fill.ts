/**
 * Fills filters on a thread of their own (src/storage/filter-fill-thread.ts). A maintenance pass reads about
 * 100,000 keys of the open generation; hashed on the front thread they took ~1 µs of its CPU each, its event
 * loop waited 13–17 ms at a time while they did, and the acks of those moments waited with it
 * (docs/performance.md#latency-under-paced-load). Here the front only copies each key into a batch.
 */
import path from "node:path";
import { Worker } from "node:worker_threads";
import type { DedupFilter } from "../shared/dedup-filter";
import { type FillMessage, type FillReply, KEY_BYTES } from "./filter-fill-protocol";

/** Keys a message carries: 64 KiB, a few per COPY chunk's worth of keys, few messages per pass. */
const BATCH_KEYS = 4096;

export class FilterFill {
  private thread: Worker | null = null;
  private readonly settled = new Int32Array(new SharedArrayBuffer(4));
  private seq = 0;
  private fill = 0;
  private readonly waiting = new Map<number, { resolve: (full: boolean) => void; reject: (err: Error) => void }>();
  private filters: SharedArrayBuffer[] = [];
  /** The thread this fill's batches went to: one that died since took them with it. */
  private filling: Worker | null = null;
  private batch = new Uint8Array(BATCH_KEYS * KEY_BYTES);
  private n = 0;

  /** Starts a fill of `filters`: the keys added until settle() go into each, once. */
  begin(filters: readonly DedupFilter[]): void {
    this.filters = filters.map((f) => f.shared);
    this.fill++;
    this.n = 0;
    this.filling = this.started();
  }

  /** Adds the key whose 16 bytes start at `at` in `data`. */
  add(data: Buffer, at: number): void {
    data.copy(this.batch, this.n * KEY_BYTES, at, at + KEY_BYTES);
    if (++this.n === BATCH_KEYS) this.send();
  }

  /**
   * Resolves once every key added is in the filters: true, or false when one of them had no room for a key (it
   * misses keys, and must be discarded).
   */
  settle(): Promise<boolean> {
    if (this.n > 0) this.send();
    const seq = ++this.seq;
    return new Promise<boolean>((resolve, reject) => {
      if (this.filling === null || this.filling !== this.thread) throw new Error("the filter-fill thread stopped during a fill");
      this.waiting.set(seq, { resolve, reject });
      this.post({ type: "settle", fill: this.fill, seq });
    }).then((full) => {
      if (Atomics.load(this.settled, 0) !== seq) throw new Error("filter fill settled out of order");
      return !full;
    });
  }

  /** Stops the thread; a fill under way fails. */
  async close(): Promise<void> {
    const thread = this.thread;
    this.thread = null;
    await thread?.terminate();
  }

  private send(): void {
    const keys = this.batch.buffer as ArrayBuffer;
    this.post({ type: "keys", fill: this.fill, filters: this.filters, keys, n: this.n }, [keys]);
    this.batch = new Uint8Array(BATCH_KEYS * KEY_BYTES);
    this.n = 0;
  }

  private post(m: FillMessage, transfer: ArrayBuffer[] = []): void {
    this.filling?.postMessage(m, transfer);
  }

  private started(): Worker {
    if (this.thread !== null) return this.thread;
    const thread = new Worker(path.join(__dirname, "filter-fill-thread.js"), { workerData: this.settled.buffer });
    thread.on("message", (r: FillReply) => {
      const w = this.waiting.get(r.seq);
      this.waiting.delete(r.seq);
      w?.resolve(r.full);
    });
    const failed = (err: Error) => {
      if (this.thread === thread) this.thread = null;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    thread.on("error", failed);
    thread.on("exit", (code) => failed(new Error(`the filter-fill thread exited (code ${code})`)));
    thread.unref(); // background work, never what keeps the process alive (after the listeners, which ref it)
    this.thread = thread;
    return thread;
  }
}

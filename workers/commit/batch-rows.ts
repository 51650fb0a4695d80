import type { CopyRows, RowSource } from "../records/copy-rows";

/**
 * One commit target's rows in a batch: its tasks' CopyRows end to end, addressed by batch row. Nothing is
 * copied until a COPY needs a payload.
 */
export class BatchRows implements RowSource {
  private readonly chunks: CopyRows[] = [];
  /** The batch row each chunk starts at. */
  private readonly firsts: number[] = [];
  length = 0;

  /** Appends a task's rows; returns the batch row they start at. */
  add(rows: CopyRows): number {
    const first = this.length;
    this.chunks.push(rows);
    this.firsts.push(first);
    this.length += rows.length;
    return first;
  }

  /** Rows `[from, to)` as one payload: a view when they sit in one task's rows, else one copy. */
  payload(from = 0, to = this.length): Buffer {
    if (from >= to) return Buffer.alloc(0);
    const first = this.chunkOf(from);
    const last = this.chunkOf(to - 1);
    if (first === last) return this.chunks[first].payload(from - this.firsts[first], to - this.firsts[first]);
    const slices: Buffer[] = [];
    for (let c = first; c <= last; c++) {
      const chunk = this.chunks[c];
      slices.push(chunk.payload(c === first ? from - this.firsts[c] : 0, c === last ? to - this.firsts[c] : chunk.length));
    }
    return Buffer.concat(slices);
  }

  bytesOf(i: number): Buffer {
    const c = this.chunkOf(i);
    return this.chunks[c].bytesOf(i - this.firsts[c]);
  }

  text(i: number): string {
    const c = this.chunkOf(i);
    return this.chunks[c].text(i - this.firsts[c]);
  }

  /** The chunk holding batch row `i` (binary search: a batch holds tens of tasks). */
  private chunkOf(i: number): number {
    let lo = 0;
    let hi = this.firsts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.firsts[mid] <= i) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

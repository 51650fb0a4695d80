/**
 * COPY text rows held as UTF-8 bytes from validation until their commit. A batch waits tens to hundreds of
 * milliseconds for its transaction; rows held that long as strings were copied by each scavenge of the
 * worker's young generation and then promoted, where a Buffer's bytes live outside the V8 heap
 * (docs/performance.md#daemon-cpu-per-event). Every row ends in a newline, so a run of rows is a COPY payload.
 */

/** Rows a COPY can be fed from: a task's (CopyRows), a batch's (commit/batch-rows.ts). */
export interface RowSource {
  readonly length: number;
  /** Rows `[from, to)` as one COPY payload. */
  payload(from: number, to: number): Buffer;
  /** Row `i` as text, its newline included. */
  text(i: number): string;
  /** Row `i`'s bytes: a view, no copy. */
  bytesOf(i: number): Buffer;
}

export class CopyRows implements RowSource {
  /** `rows` (each ending in a newline) written once into a Buffer of their UTF-8 size. */
  static encode(rows: readonly string[]): CopyRows {
    const ends = new Uint32Array(rows.length);
    let size = 0;
    for (let i = 0; i < rows.length; i++) ends[i] = size += Buffer.byteLength(rows[i], "utf8");
    const bytes = Buffer.allocUnsafeSlow(size);
    for (let i = 0, at = 0; i < rows.length; i++) at += bytes.write(rows[i], at, "utf8");
    return new CopyRows(bytes, ends);
  }

  /** The rows of `from` at the ascending positions `picked`, copied into one Buffer (the rows a claim kept). */
  static pick(from: RowSource, picked: readonly number[]): CopyRows {
    const slices = picked.map((i) => from.bytesOf(i));
    const ends = new Uint32Array(slices.length);
    let size = 0;
    for (let i = 0; i < slices.length; i++) ends[i] = size += slices[i].length;
    return new CopyRows(Buffer.concat(slices, size), ends);
  }

  private constructor(
    /** The rows' bytes, end to end. */
    readonly bytes: Buffer,
    /** Where each row ends in `bytes`. */
    private readonly ends: Uint32Array,
  ) {}

  get length(): number {
    return this.ends.length;
  }

  /** Rows `[from, to)`: a view of the same memory, no copy. */
  payload(from = 0, to = this.length): Buffer {
    return this.bytes.subarray(this.start(from), this.start(to));
  }

  bytesOf(i: number): Buffer {
    return this.bytes.subarray(this.start(i), this.ends[i]);
  }

  text(i: number): string {
    return this.bytes.toString("utf8", this.start(i), this.ends[i]);
  }

  /** Where row `i` starts: where the row before it ends (`length` for the end of the last). */
  private start(i: number): number {
    return i === 0 ? 0 : this.ends[i - 1];
  }
}

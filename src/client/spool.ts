/**
 * The producer client's spool (README "Producer client"): frames are appended to a file before they are
 * sent and forgotten once acknowledged, so a producer process that is killed and started again resends
 * what was never acknowledged, and nothing else.
 *
 * One file, `spool.log`, of entries `[u32 body length][u32 crc32 of body][u8 kind][body]`: kind 1 a frame
 * (`{"s":seq,"n":records}\n` then the frame's text), kind 2 an ack (the acked seq, decimal). A torn or
 * corrupt entry ends the log: it was being written when the process died, so it was never sent. When most
 * of the file is acknowledged it is rewritten with only the live frames (write, fsync, rename, fsync dir).
 *
 * Durability: every frame entry is fsynced before its frame is sent (`fsync: "frame"`, the default), so a
 * frame the server may have seen is always in the spool; ack entries are not fsynced (losing one only
 * means a frame the server already has is offered again, and the session's committed_seq skips it).
 * `fsync: "none"` leaves flushing to the OS: a machine crash (not a process crash) may then lose frames.
 * One process per spool directory.
 */
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

export interface SpooledFrame {
  seq: number;
  count: number;
  text: string;
  bytes: number;
}

export type SpoolFsync = "frame" | "none";

const FRAME = 1;
const ACK = 2;
const HEADER = 9;
/** Rewrite when at least this many bytes are dead and they are most of the file. */
const COMPACT_BYTES = 4 * 1024 * 1024;

export class Spool {
  private fh: fs.promises.FileHandle | null = null;
  private fileBytes = 0;
  /** Unacknowledged frames, in seq order. */
  private frames: SpooledFrame[] = [];
  private liveBytes = 0;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly file: string,
    readonly maxBytes: number,
    private readonly fsync: SpoolFsync,
  ) {}

  /** Opens (or creates) the spool in `dir` and reads back the frames never acknowledged. */
  static async open(dir: string, maxBytes: number, fsync: SpoolFsync): Promise<Spool> {
    await fs.promises.mkdir(dir, { recursive: true });
    const spool = new Spool(path.join(dir, "spool.log"), maxBytes, fsync);
    await spool.load();
    return spool;
  }

  /** Frames never acknowledged, in seq order (read at open, then kept up to date). */
  get pending(): readonly SpooledFrame[] {
    return this.frames;
  }

  /** Bytes of unacknowledged frames: the spool is full when the next frame would pass maxBytes. */
  get bytes(): number {
    return this.liveBytes;
  }

  /** Appends a frame durably (see the fsync policy); resolves once it may be sent. */
  append(frame: SpooledFrame): Promise<void> {
    this.frames.push(frame);
    this.liveBytes += frame.bytes;
    return this.serial(async () => {
      await this.write(entry(FRAME, Buffer.from(`${JSON.stringify({ s: frame.seq, n: frame.count })}\n${frame.text}`)));
      if (this.fsync === "frame") await this.fh!.sync();
    });
  }

  /** Forgets every frame up to `seq` (acknowledged, or committed by an earlier connection). */
  ack(seq: number): Promise<void> {
    let n = 0;
    while (n < this.frames.length && this.frames[n].seq <= seq) this.liveBytes -= this.frames[n++].bytes;
    if (n === 0) return this.queue.then(() => undefined);
    this.frames.splice(0, n);
    return this.serial(async () => {
      await this.write(entry(ACK, Buffer.from(String(seq))));
      if (this.fileBytes >= COMPACT_BYTES && this.liveBytes * 2 < this.fileBytes) await this.rewrite();
    });
  }

  /** Gives the unacknowledged frames new seqs from `first` on (the server's session starts lower than they were numbered). */
  renumber(first: number): Promise<void> {
    this.frames.forEach((f, i) => (f.seq = first + i));
    return this.serial(() => this.rewrite());
  }

  async close(): Promise<void> {
    await this.queue;
    await this.fh?.close();
    this.fh = null;
  }

  private serial(step: () => Promise<void>): Promise<void> {
    const next = this.queue.then(step);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async write(buf: Buffer): Promise<void> {
    await this.fh!.write(buf, 0, buf.length, this.fileBytes);
    this.fileBytes += buf.length;
  }

  private async load(): Promise<void> {
    let data: Buffer;
    try {
      data = await fs.promises.readFile(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      data = Buffer.alloc(0);
    }
    let at = 0;
    while (at + HEADER <= data.length) {
      const length = data.readUInt32LE(at);
      const crc = data.readUInt32LE(at + 4);
      const kind = data[at + 8];
      const end = at + HEADER + length;
      if (end > data.length) break;
      const body = data.subarray(at + HEADER, end);
      if (zlib.crc32(body) !== crc) break;
      if (kind === FRAME) {
        const nl = body.indexOf(10);
        let head: { s: number; n: number };
        try {
          head = JSON.parse(body.subarray(0, nl).toString("utf8")) as { s: number; n: number };
        } catch {
          break; // Same as a torn entry: the crc matched by chance on garbage.
        }
        const text = body.subarray(nl + 1).toString("utf8");
        this.frames.push({ seq: head.s, count: head.n, text, bytes: Buffer.byteLength(text) });
      } else if (kind === ACK) {
        const seq = Number(body.toString("utf8"));
        while (this.frames.length > 0 && this.frames[0].seq <= seq) this.frames.shift();
      } else break;
      at = end;
    }
    for (const f of this.frames) this.liveBytes += f.bytes;
    // Start from a clean file: the torn tail (if any) and the acknowledged frames go.
    await this.rewrite();
  }

  private async rewrite(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    const out = await fs.promises.open(tmp, "w");
    let bytes = 0;
    try {
      for (const f of this.frames) {
        const buf = entry(FRAME, Buffer.from(`${JSON.stringify({ s: f.seq, n: f.count })}\n${f.text}`));
        await out.write(buf, 0, buf.length, bytes);
        bytes += buf.length;
      }
      await out.sync();
    } finally {
      await out.close();
    }
    await this.fh?.close();
    await fs.promises.rename(tmp, this.file);
    const dir = await fs.promises.open(path.dirname(this.file), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.fh = await fs.promises.open(this.file, "r+");
    this.fileBytes = bytes;
  }
}

function entry(kind: number, body: Buffer): Buffer {
  const head = Buffer.alloc(HEADER);
  head.writeUInt32LE(body.length, 0);
  head.writeUInt32LE(zlib.crc32(body), 4);
  head[8] = kind;
  return Buffer.concat([head, body]);
}

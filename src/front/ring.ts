/**
 * The bounded SharedArrayBuffer ring that carries request bodies and WebSocket frames from the front
 * thread to the workers without structured clone.
 *
 * Only the front thread allocates and frees; workers read the bytes of a region between the moment its
 * descriptor is dispatched and the moment the task settles. A region is therefore freed exactly once,
 * by the front thread, after its task's promise settles.
 *
 * The buffer is split into shards, each a circular allocator with in-order reclaim. Tasks finish out of
 * order, so a slow region holds back reuse of the space behind it; spreading allocations round-robin over
 * shards keeps one slow batch from stalling the whole ring.
 */

export interface RingRegion {
  readonly shard: number;
  /** Byte offset into the whole SharedArrayBuffer. */
  readonly offset: number;
  readonly length: number;
  /** Bytes consumed in the shard (length plus any space skipped at the shard's end by a wrap). */
  readonly span: number;
  freed: boolean;
}

interface Shard {
  readonly base: number;
  readonly size: number;
  /** Next write position (relative to base). */
  head: number;
  /** Start of the oldest live region; equals head when the shard is empty. */
  tail: number;
  used: number;
  /** Live regions in allocation order; the front one starts at tail. */
  live: RingRegion[];
  liveStart: number;
}

interface Waiter {
  length: number;
  priority: number;
  seq: number;
  resolve: (region: RingRegion | null) => void;
  timer: NodeJS.Timeout | null;
}

export interface RingOptions {
  bytes: number;
  shards: number;
}

export class Ring {
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
  readonly capacity: number;
  readonly maxRegion: number;
  private readonly shards: Shard[];
  private next = 0;
  private usedBytes = 0;
  private waiters: Waiter[] = [];
  private waiterSeq = 0;

  constructor(options: RingOptions) {
    const shardCount = Math.max(1, options.shards);
    const shardSize = Math.floor(options.bytes / shardCount);
    this.capacity = shardSize * shardCount;
    this.buffer = new SharedArrayBuffer(this.capacity);
    this.bytes = new Uint8Array(this.buffer);
    this.maxRegion = shardSize;
    this.shards = [];
    for (let i = 0; i < shardCount; i++) {
      this.shards.push({ base: i * shardSize, size: shardSize, head: 0, tail: 0, used: 0, live: [], liveStart: 0 });
    }
  }

  get used(): number {
    return this.usedBytes;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Allocates `length` contiguous bytes, or returns null when no shard has room right now. */
  tryAlloc(length: number): RingRegion | null {
    if (length > this.maxRegion || length <= 0) return null;
    const n = this.shards.length;
    for (let i = 0; i < n; i++) {
      const index = (this.next + i) % n;
      const region = this.allocIn(index, length);
      if (region !== null) {
        this.next = (index + 1) % n;
        return region;
      }
    }
    return null;
  }

  /**
   * Allocates when room appears. Higher priority waiters are served first, then in arrival order;
   * resolves null when `deadlineMs` passes first.
   */
  alloc(length: number, priority: number, deadlineMs: number): Promise<RingRegion | null> {
    if (this.waiters.length === 0) {
      const region = this.tryAlloc(length);
      if (region !== null) return Promise.resolve(region);
    }
    if (length > this.maxRegion || length <= 0) return Promise.resolve(null);
    return new Promise((resolve) => {
      const waiter: Waiter = { length, priority, seq: this.waiterSeq++, resolve, timer: null };
      waiter.timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(null);
      }, deadlineMs);
      this.insertWaiter(waiter);
    });
  }

  free(region: RingRegion): void {
    if (region.freed) return;
    region.freed = true;
    const shard = this.shards[region.shard];
    shard.used -= region.span;
    this.usedBytes -= region.span;
    // Reclaim in allocation order: the tail only moves past regions that are all freed.
    while (shard.liveStart < shard.live.length && shard.live[shard.liveStart].freed) {
      const r = shard.live[shard.liveStart++];
      shard.tail = r.offset - shard.base + r.length;
    }
    if (shard.liveStart === shard.live.length) {
      shard.live.length = 0;
      shard.liveStart = 0;
      shard.head = 0;
      shard.tail = 0;
    } else if (shard.liveStart > 1024) {
      shard.live = shard.live.slice(shard.liveStart);
      shard.liveStart = 0;
    }
    this.wakeWaiters();
  }

  private allocIn(index: number, length: number): RingRegion | null {
    const s = this.shards[index];
    const empty = s.liveStart === s.live.length;
    let start: number;
    let span = length;
    if (empty) {
      start = 0;
    } else if (s.head > s.tail || (s.head === s.tail && s.used === 0)) {
      // Live data lies in [tail, head): room after head, or wrap to the front before tail.
      if (s.size - s.head >= length) start = s.head;
      else if (s.tail >= length) {
        start = 0;
        span = length + (s.size - s.head);
      } else return null;
    } else {
      // Wrapped: live data lies in [tail, size) and [0, head).
      if (s.tail - s.head >= length) start = s.head;
      else return null;
    }
    const region: RingRegion = { shard: index, offset: s.base + start, length, span, freed: false };
    s.head = start + length;
    s.used += span;
    this.usedBytes += span;
    s.live.push(region);
    return region;
  }

  private insertWaiter(waiter: Waiter): void {
    let i = this.waiters.length;
    while (i > 0 && this.waiters[i - 1].priority < waiter.priority) i--;
    this.waiters.splice(i, 0, waiter);
  }

  private wakeWaiters(): void {
    while (this.waiters.length > 0) {
      const waiter = this.waiters[0];
      const region = this.tryAlloc(waiter.length);
      // Strict order: a large waiter at the front is not overtaken, so it cannot starve.
      if (region === null) return;
      this.waiters.shift();
      if (waiter.timer !== null) clearTimeout(waiter.timer);
      waiter.resolve(region);
    }
  }
}

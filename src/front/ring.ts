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
 *
 * Priority at admission (docs/architecture.md#priority): the last shard, when `reserveBytes` is set, is a reserve that
 * only work known to be of priority above 0 may use, so such work finds room while priority-0 bodies fill
 * the rest. Waiters are served highest priority first (arrival order within a priority), and no allocation
 * takes room that a waiter of higher priority is waiting for. A waiter's priority may be raised while it
 * waits (`claim().raise`), when the body's priority becomes known only then.
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
  settled: boolean;
}

/** A pending allocation: its region (null past the deadline), and a way to raise its priority meanwhile. */
export interface RingClaim {
  readonly region: Promise<RingRegion | null>;
  /** Moves the claim up to `priority` if that is higher (never down); it may be served at once. */
  raise(priority: number): void;
}

export interface RingOptions {
  bytes: number;
  /** Shards the general (non-reserved) part is split into. */
  shards: number;
  /** Bytes set apart for work of priority above 0 (taken from `bytes`); 0 for none. */
  reserveBytes?: number;
}

const NO_RAISE = (): void => undefined;

export class Ring {
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
  readonly capacity: number;
  readonly maxRegion: number;
  /** Size of the reserve for priority above 0 (part of capacity). */
  readonly reserveCapacity: number;
  private readonly shards: Shard[];
  /** General shards are [0, general); the reserve, if any, is shard `general`. */
  private readonly general: number;
  private next = 0;
  private usedBytes = 0;
  private waiters: Waiter[] = [];
  private waiterSeq = 0;

  constructor(options: RingOptions) {
    const shardCount = Math.max(1, options.shards);
    const asked = Math.max(0, Math.floor(options.reserveBytes ?? 0));
    const shardSize = Math.floor((options.bytes - asked) / shardCount);
    // The reserve takes what the general shards' rounding leaves, so the ring is exactly `bytes`.
    const reserve = asked > 0 ? options.bytes - shardSize * shardCount : 0;
    this.general = shardCount;
    this.reserveCapacity = reserve;
    this.capacity = shardSize * shardCount + reserve;
    this.buffer = new SharedArrayBuffer(this.capacity);
    this.bytes = new Uint8Array(this.buffer);
    this.maxRegion = shardSize;
    this.shards = [];
    for (let i = 0; i < shardCount; i++) {
      this.shards.push({ base: i * shardSize, size: shardSize, head: 0, tail: 0, used: 0, live: [], liveStart: 0 });
    }
    if (reserve > 0) this.shards.push({ base: shardCount * shardSize, size: reserve, head: 0, tail: 0, used: 0, live: [], liveStart: 0 });
  }

  get used(): number {
    return this.usedBytes;
  }

  /** Bytes of the reserve in use. */
  get reserveUsed(): number {
    return this.general < this.shards.length ? this.shards[this.general].used : 0;
  }

  /** Allocations waiting for room. */
  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Allocates `length` contiguous bytes for work of `priority`, or returns null when there is no room for it
   * right now, or when a waiter of higher priority is waiting for room.
   */
  tryAlloc(length: number, priority = 0): RingRegion | null {
    if (this.waiters.length > 0 && this.waiters[0].priority > priority) return null;
    return this.allocate(length, priority);
  }

  /**
   * Allocates when room appears. Higher priority waiters are served first, then in arrival order;
   * resolves null when `deadlineMs` passes first.
   */
  alloc(length: number, priority: number, deadlineMs: number): Promise<RingRegion | null> {
    return this.claim(length, priority, deadlineMs).region;
  }

  /** As alloc, and the claim's priority can be raised while it waits. */
  claim(length: number, priority: number, deadlineMs: number): RingClaim {
    if (this.waiters.length === 0 || this.waiters[0].priority < priority) {
      const region = this.allocate(length, priority);
      if (region !== null) return { region: Promise.resolve(region), raise: NO_RAISE };
    }
    if (length > this.maxRegion || length <= 0) return { region: Promise.resolve(null), raise: NO_RAISE };
    let waiter!: Waiter;
    const region = new Promise<RingRegion | null>((resolve) => {
      waiter = { length, priority, seq: this.waiterSeq++, resolve, timer: null, settled: false };
    });
    waiter.timer = setTimeout(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
      waiter.settled = true;
      waiter.resolve(null);
      // A large waiter that gave up may have been holding back smaller ones behind it.
      if (i === 0) this.wakeWaiters();
    }, deadlineMs);
    this.insertWaiter(waiter);
    return { region, raise: (p) => this.raise(waiter, p) };
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

  /** General shards round-robin; then, for priority above 0, the reserve. */
  private allocate(length: number, priority: number): RingRegion | null {
    if (length > this.maxRegion || length <= 0) return null;
    const n = this.general;
    for (let i = 0; i < n; i++) {
      const index = (this.next + i) % n;
      const region = this.allocIn(index, length);
      if (region !== null) {
        this.next = (index + 1) % n;
        return region;
      }
    }
    if (priority > 0 && length <= this.reserveCapacity) return this.allocIn(n, length);
    return null;
  }

  private raise(waiter: Waiter, priority: number): void {
    if (waiter.settled || priority <= waiter.priority) return;
    const i = this.waiters.indexOf(waiter);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    waiter.priority = priority;
    this.insertWaiter(waiter);
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

  /** Highest priority first, then arrival order (a raised waiter keeps its place among its new peers). */
  private insertWaiter(waiter: Waiter): void {
    let i = this.waiters.length;
    while (i > 0) {
      const w = this.waiters[i - 1];
      if (w.priority > waiter.priority || (w.priority === waiter.priority && w.seq < waiter.seq)) break;
      i--;
    }
    this.waiters.splice(i, 0, waiter);
  }

  private wakeWaiters(): void {
    while (this.waiters.length > 0) {
      const waiter = this.waiters[0];
      const region = this.allocate(waiter.length, waiter.priority);
      // Strict order: a large waiter at the front is not overtaken, so it cannot starve.
      if (region === null) return;
      this.waiters.shift();
      waiter.settled = true;
      if (waiter.timer !== null) clearTimeout(waiter.timer);
      waiter.resolve(region);
    }
  }
}

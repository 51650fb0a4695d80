/**
 * Which publication of the id-state filters each worker has taken, in shared memory: the front reuses a filter's
 * memory it no longer publishes only once every worker has taken a later publication, so the open group's
 * filter, copied for each generation that joins it, lives in a few buffers instead of one per generation left
 * for three garbage collectors (docs/storage.md#filter-memory). A worker checks its filters synchronously
 * and replaces them whole, so once it has taken publication N it never reads a buffer N left out.
 */

/** Workers that can register; past them (a pool restarted that many times) the front stops reusing memory. */
const SLOTS = 64;
/** Int32 layout: slots claimed so far, then each slot's publication (0: none taken yet). */
const CLAIMED = 0;
const FIRST_SLOT = 1;
/** What a slot holds once its worker has exited. */
const RELEASED = -1;

export class FilterReaders {
  private readonly words: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer((FIRST_SLOT + SLOTS) * 4)) {
    this.words = new Int32Array(buffer);
  }

  /**
   * A worker's slot, claimed before it subscribes to the publications (so no publication reaches an unregistered
   * worker), and released when it exits. Null past SLOTS: the claim then stops all reuse, which is always safe.
   */
  join(): FilterReader {
    const slot = Atomics.add(this.words, CLAIMED, 1);
    return new FilterReader(this.words, slot < SLOTS ? FIRST_SLOT + slot : null);
  }

  /** Whether every registered worker has taken publication `seq` or a later one (or exited). */
  allPast(seq: number): boolean {
    const claimed = Atomics.load(this.words, CLAIMED);
    if (claimed > SLOTS) return false;
    for (let i = FIRST_SLOT; i < FIRST_SLOT + claimed; i++) {
      const took = Atomics.load(this.words, i);
      if (took !== RELEASED && took < seq) return false;
    }
    return true;
  }
}

/** One worker's slot. */
export class FilterReader {
  constructor(
    private readonly words: Int32Array,
    private readonly slot: number | null,
  ) {
    if (slot !== null) process.once("exit", () => Atomics.store(words, slot, RELEASED));
  }

  /** This worker has replaced its filters with those of publication `seq`. */
  took(seq: number): void {
    if (this.slot !== null) Atomics.store(this.words, this.slot, seq);
  }
}

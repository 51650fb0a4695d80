/**
 * Keeps one producer session's frames in seq order on their way to PostgreSQL (docs/websocket-protocol.md#producer-sessions).
 * At most one task of the session is in the workers at a time; the frames that arrive meanwhile wait here and
 * go together as the next task, so a session is not serialised frame by frame: each commit takes every
 * frame the producer sent while the previous one ran (up to the window).
 */
import type { IngestOutcome } from "../../shared/task-protocol";
import type { ApiKey } from "../../security/api-keys";
import type { Ring, RingRegion } from "../ring";
import type { SessionFrameSubmission, SessionSubmission, Submitter } from "../submission/submitter";

/** Body bytes of one session task at most (a frame larger than this still goes, alone). */
const TASK_BYTES = 4 * 1024 * 1024;

export interface ChainFrame<T> extends SessionFrameSubmission {
  /** In the ring (or empty): may be submitted. */
  ready: boolean;
  owner: T;
}

export class SessionChain<T> {
  private queue: Array<ChainFrame<T>> = [];
  private running = false;
  private stopped = false;

  constructor(
    private readonly submitter: Submitter,
    private readonly ring: Ring,
    private readonly session: SessionSubmission,
    private readonly key: () => ApiKey,
    private readonly deadlineMs: number,
    /** Each frame's final outcome, in seq order. */
    private readonly settle: (owner: T, outcome: IngestOutcome) => void,
  ) {}

  /** Takes the next frame in seq order; it is submitted once `ready` says its bytes are in the ring. */
  add(seq: number, receivedAt: number, owner: T): ChainFrame<T> {
    const frame: ChainFrame<T> = { seq, receivedAt, ringAt: 0, region: null, ready: false, owner };
    this.queue.push(frame);
    return frame;
  }

  ready(frame: ChainFrame<T>, region: RingRegion | null, ringAt: number): void {
    frame.region = region;
    frame.ringAt = ringAt;
    frame.ready = true;
    this.pump();
  }

  /** The socket is gone: frames not yet submitted give back their ring space; a running task stops retrying. */
  stop(): void {
    this.stopped = true;
    for (const f of this.queue) if (f.ready && f.region !== null) this.ring.free(f.region);
    this.queue = [];
  }

  private pump(): void {
    if (this.running || this.stopped) return;
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length && this.queue[n].ready) {
      const length = this.queue[n].region?.length ?? 0;
      if (n > 0 && bytes + length > TASK_BYTES) break;
      bytes += length;
      n++;
    }
    if (n === 0) return;
    const frames = this.queue.splice(0, n);
    this.running = true;
    void this.submitter
      .commitSession(
        this.session,
        frames,
        this.key(),
        this.deadlineMs,
        () => !this.stopped,
        (i, outcome) => this.settle(frames[i].owner, outcome),
      )
      .finally(() => {
        this.running = false;
        this.pump();
      });
  }
}

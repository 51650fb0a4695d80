/**
 * The owner of a body from the ring to its outcome, whichever transport took it in: it dispatches the body
 * to a worker, retries while the database is down (until the caller's deadline), frees the ring region
 * once the outcome is final, charges the producer's rate bucket, and keeps the request's status for
 * `GET /v1/batches/{id}`. Transports only turn the outcome into their answer (see answers.ts).
 */
import { now } from "../../shared/clock";
import type { IngestOutcome, SessionTask, TaskFormat } from "../../shared/task-protocol";
import type { ApiKey } from "../../security/api-keys";
import type { Auth } from "../../security/auth";
import type { BatchRegistry } from "../../storage/batch-registry";
import type { Dispatcher, Submission } from "../dispatcher";
import type { Ring, RingRegion } from "../ring";

/** Delay between resubmissions of a body while the database is unavailable. */
const DB_RETRY_MS = 250;

export interface SubmitterOptions {
  ring: Ring;
  dispatcher: Dispatcher;
  auth: Auth;
  batches: BatchRegistry;
}

export interface CommitOptions {
  /**
   * Until when (clock.now()) a `db_unavailable` outcome is retried rather than returned; 0 never retries
   * (HTTP answers 503 at once and the producer retries).
   */
  retryUntil: number;
  /** Whether anyone still waits for the outcome: a cancelled body stops retrying. */
  wanted?: () => boolean;
}

/** A producer session's frame in the ring (region null: an empty frame). */
export interface SessionFrameSubmission {
  seq: number;
  region: RingRegion | null;
  receivedAt: number;
  ringAt: number;
}

export interface SessionSubmission {
  stream: string;
  format: TaskFormat;
  producer: string;
  epoch: number;
  source: string;
}

export class Submitter {
  constructor(private readonly options: SubmitterOptions) {}

  /**
   * Runs a body that is in the ring (`sub.region`) to its final outcome. Never rejects. The region is freed
   * before this resolves: a caller must not touch it afterwards.
   */
  async commit(sub: Submission, key: ApiKey, options: CommitOptions): Promise<IngestOutcome> {
    const { ring, dispatcher, auth, batches } = this.options;
    if (sub.recordBatch) batches.begin(sub.requestId, sub.stream, Date.now());
    let outcome: IngestOutcome;
    for (;;) {
      outcome = await dispatcher.run(sub);
      if (outcome.kind !== "db_unavailable" || now() >= options.retryUntil || options.wanted?.() === false) break;
      // Never a faked answer: the body stays in the ring and is submitted again once the database may be back.
      await new Promise((r) => setTimeout(r, DB_RETRY_MS));
    }
    ring.free(sub.region);
    auth.charge(key, outcome); // rate limit: charged once the event count is known
    if (sub.recordBatch) batches.settle(sub.requestId, outcome);
    return outcome;
  }

  /**
   * Runs consecutive frames of one producer session to their final outcomes, in one worker task per attempt
   * (docs/websocket-protocol.md#producer-sessions). `settle` is called once per frame, in seq order as each
   * becomes final; its region is freed first. Frames the database could not take are submitted again (the
   * session's committed seq tells the worker which of them an earlier attempt stored after all) until
   * `retryUntil` counted from the oldest one's arrival; past it, or once nobody waits, they settle as
   * `db_unavailable`.
   */
  async commitSession(
    session: SessionSubmission,
    frames: readonly SessionFrameSubmission[],
    key: ApiKey,
    deadlineMs: number,
    wanted: () => boolean,
    settle: (index: number, outcome: IngestOutcome) => void,
  ): Promise<void> {
    const { dispatcher } = this.options;
    let first = 0;
    for (;;) {
      const task: SessionTask = {
        ...session,
        frames: frames.slice(first).map((f) => ({
          seq: f.seq,
          offset: f.region?.offset ?? 0,
          length: f.region?.length ?? 0,
          receivedAt: f.receivedAt,
          ringAt: f.ringAt,
        })),
      };
      const outcomes = await dispatcher.runSession(task);
      let unavailable: IngestOutcome | null = null;
      const start = first;
      for (let i = 0; i < outcomes.length; i++) {
        if (outcomes[i].kind === "db_unavailable") {
          unavailable = outcomes[i];
          break;
        }
        this.settleFrame(frames[start + i], key, outcomes[i]);
        settle(start + i, outcomes[i]);
        first++;
      }
      if (unavailable === null) return;
      // Never a faked answer: the frames stay in the ring and are submitted again once the database may be back.
      if (now() >= frames[first].receivedAt + deadlineMs || !wanted()) {
        for (let i = first; i < frames.length; i++) {
          this.settleFrame(frames[i], key, unavailable);
          settle(i, unavailable);
        }
        return;
      }
      await new Promise((r) => setTimeout(r, DB_RETRY_MS));
    }
  }

  private settleFrame(frame: SessionFrameSubmission, key: ApiKey, outcome: IngestOutcome): void {
    if (frame.region !== null) this.options.ring.free(frame.region);
    this.options.auth.charge(key, outcome);
  }
}

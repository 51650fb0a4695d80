/**
 * The owner of a body from the ring to its outcome, whichever transport took it in: it dispatches the body
 * to a worker, retries while the database is down (until the caller's deadline), frees the ring region
 * once the outcome is final, charges the producer's rate bucket, and keeps the request's status for
 * `GET /v1/batches/{id}`. Transports only turn the outcome into their answer (see answers.ts).
 */
import { now } from "../../shared/clock";
import type { IngestOutcome } from "../../shared/task-protocol";
import type { ApiKey } from "../../security/api-keys";
import type { Auth } from "../../security/auth";
import type { BatchRegistry } from "../../storage/batch-registry";
import type { Dispatcher, Submission } from "../dispatcher";
import type { Ring } from "../ring";

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
    if (sub.recordBatch)
      batches.settle(sub.requestId, outcome.kind === "db_unavailable" || outcome.kind === "failed" ? outcome.message : null);
    return outcome;
  }
}

/**
 * Bodies the daemon builds itself (dead-letter replay; docs/http-api.md#replaying-dead-letters) take the
 * path a producer's body takes: ring space (waiting for it like an HTTP body, up to the overload deadline),
 * then the submitter, which dispatches, retries while the database is down, frees the region and charges the
 * key. Nothing here commits anything itself.
 */
import { randomUUID } from "node:crypto";
import { now } from "../../shared/clock";
import { emptyOutcome, type IngestOutcome, type TaskFormat } from "../../shared/task-protocol";
import type { ApiKey } from "../../security/api-keys";
import type { Transport } from "./ack-telemetry";
import type { Pipeline } from "./pipeline";

export interface InternalBody {
  stream: string;
  format: TaskFormat;
  text: string;
  /** Kept with the dead letters of records still rejected (`replay`, `pull:<name>`). */
  source: string;
  /** The metrics' transport label. */
  transport: Transport;
  /**
   * Dead letters this body replays, marked in its commit. Such a body is never resubmitted after
   * `db_unavailable` (its commit may have happened with the answer lost; the mark then tells), and keeps an
   * ingest_batches row, so an unreadable one gets its dead letter again.
   */
  replayOf?: string[];
}

/**
 * Runs one body to its final outcome. `overloaded` (no ring space within the deadline) comes back as a
 * `db_unavailable` outcome with that message: in both cases nothing was stored and the caller may retry.
 */
export async function submitInternalBody(pipeline: Pipeline, key: ApiKey, body: InternalBody): Promise<IngestOutcome> {
  const { ring, submitter, telemetry, limits } = pipeline;
  const receivedAt = now();
  const bytes = Buffer.from(body.text, "utf8");
  const requestId = randomUUID();
  if (bytes.length > limits.maxBodyBytes) {
    return emptyOutcome({ requestId, priority: 0 }, "too_large", `body of ${bytes.length} bytes exceeds ${limits.maxBodyBytes}`);
  }
  const region = await ring.alloc(bytes.length, 0, limits.overloadDeadlineMs);
  if (region === null) {
    return emptyOutcome({ requestId, priority: 0 }, "db_unavailable", "ingestd is overloaded; nothing was stored, retry later");
  }
  ring.bytes.set(bytes, region.offset);
  const outcome = await submitter.commit(
    {
      stream: body.stream,
      format: body.format,
      encoding: "identity",
      envelope: false,
      region,
      requestId,
      priority: 0,
      receivedAt,
      ringAt: now(),
      source: body.source,
      recordBatch: body.replayOf !== undefined,
      ...(body.replayOf !== undefined ? { replayOf: body.replayOf } : {}),
    },
    key,
    { retryUntil: body.replayOf !== undefined ? 0 : receivedAt + limits.overloadDeadlineMs },
  );
  telemetry.acknowledged(body.stream, body.transport, receivedAt, outcome);
  return outcome;
}

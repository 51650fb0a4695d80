/** What a transport adapter is given: the owners it hands every policy to (docs/architecture.md#the-front-thread). */
import type { Metrics } from "../../ops/metrics";
import type { Auth } from "../../security/auth";
import type { BatchRegistry } from "../../storage/batch-registry";
import type { Ring } from "../ring";
import type { AckTelemetry } from "./ack-telemetry";
import type { Admission } from "./admission";
import type { Submitter } from "./submitter";

export interface IngestLimits {
  /** MAX_BODY_MB in bytes: the largest body (and TPC-H line) taken in. */
  maxBodyBytes: number;
  /** How long a body may wait for ring space, or for the database, before it is refused. */
  overloadDeadlineMs: number;
  retryAfterSeconds: number;
}

export interface Pipeline {
  /** Reads the caller's key from a request's headers. */
  auth: Auth;
  admission: Admission;
  ring: Ring;
  submitter: Submitter;
  /** Batch status: a 202 is sent once the request is published there. */
  batches: BatchRegistry;
  telemetry: AckTelemetry;
  metrics: Metrics;
  limits: IngestLimits;
}

import type { Auth } from "../security/auth";
import type { BatchRegistry } from "../storage/batch-registry";
import type { IngestdConfig } from "../ops/config";
import type { Database } from "../storage/database";
import type { Dispatcher } from "./dispatcher";
import type { LatencyRecorder } from "../ops/latency";
import type { Logger } from "../ops/logger";
import type { Metrics } from "../ops/metrics";
import type { Ring } from "./ring";
import type { StreamDefinition } from "../shared/stream-definition";

/** What the front thread's routes share: built once by server.ts. */
export interface ServerContext {
  config: IngestdConfig;
  log: Logger;
  ring: Ring;
  dispatcher: Dispatcher;
  db: Database;
  metrics: Metrics;
  latency: LatencyRecorder;
  batches: BatchRegistry;
  streams: ReadonlyMap<string, StreamDefinition>;
  version: string;
  startedAt: number;
  /** API keys and per-key rate limits (SPEC §7), checked by every ingest route. */
  auth: Auth;
  /** Set by SIGTERM: new requests and frames are refused while in-flight work drains. */
  draining: boolean;
}

import type { Auth } from "./auth";
import type { BatchRegistry } from "./batch-registry";
import type { IngestdConfig } from "./config";
import type { Database } from "./database";
import type { Dispatcher } from "./dispatcher";
import type { LatencyRecorder } from "./latency";
import type { Logger } from "./logger";
import type { Metrics } from "./metrics";
import type { Ring } from "./ring";
import type { StreamDefinition } from "./stream-definition";

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

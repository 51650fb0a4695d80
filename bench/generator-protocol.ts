/**
 * Messages between the orchestrator and its load-generator processes (child_process IPC).
 *
 *   orchestrator → generator   { type: "run", spec }        connect, then report "ready"
 *   generator → orchestrator   { type: "ready" }
 *   orchestrator → generator   { type: "go" }               load for spec.durationS, drain, report
 *   generator → orchestrator   { type: "result", result }   then the generator exits
 *   generator → orchestrator   { type: "failed", message }  could not run at all
 */

export type LoadMode = "ws" | "http" | "paced";

export interface GeneratorSpec {
  mode: LoadMode;
  /** Generator number within the phase (for names only). */
  index: number;
  port: number;
  stream: string;
  /** Event ids start with `${idPrefix}`; unique per phase and process. */
  idPrefix: string;
  eventsPerFrame: number;
  durationS: number;
  drainTimeoutS: number;
  /** ws / paced: WebSocket connections of this generator. */
  connections: number;
  /** http: requests in flight. */
  concurrency: number;
  /** paced: events/s this generator offers (its share of the phase's rate). */
  rate: number;
  /** API key to present (Authorization: Bearer), or null when the daemon runs without keys. */
  token: string | null;
}

export interface GeneratorResult {
  mode: LoadMode;
  index: number;
  pid: number;
  /** Epoch ms of the first send and of the last ack (phase throughput spans all generators). */
  startedAt: number;
  endedAt: number;
  /** Epoch ms when the load stopped (start of the drain). */
  loadEndedAt: number;
  framesSent: number;
  framesAcked: number;
  eventsSent: number;
  accepted: number;
  rejected: number;
  duplicates: number;
  /** Frames / requests that failed outright (HTTP status ≥ 300 but not 207, socket errors). */
  failures: number;
  /** First few distinct failure descriptions. */
  failureSamples: string[];
  /** Frames sent but never acked (connection closed or drain timed out). */
  unacked: number;
  /** paced: frames due before the deadline but never sent because the window stayed full. */
  unsent: number;
  /** WebSocket closes seen before the bench closed the connection itself. */
  unexpectedCloses: string[];
  /** Ack-latency histogram, encoded (µs). */
  histogram: string;
  /** paced: sends that went out later than intended (window full), and the worst lag in ms. */
  lateSends: number;
  maxSendLagMs: number;
  frameBytes: number;
  cpuUserMs: number;
  cpuSystemMs: number;
}

export type ToGenerator = { type: "run"; spec: GeneratorSpec } | { type: "go" };
export type FromGenerator = { type: "ready" } | { type: "result"; result: GeneratorResult } | { type: "failed"; message: string };

/**
 * Batch status for `GET /v1/batches/{id}`, the same on every daemon of the database
 * (docs/storage.md#batch-status-across-daemons). Committed outcomes live in `ingest_batches`, written in the
 * same transaction as the rows. A request answered 202 is also written there as `pending` before the 202
 * goes out (under its request id, and under the producer's `batch_id` once a worker read it), and as
 * `failed` when it ends without a commit; a committed or failed row of a request outranks its pending
 * rows. This daemon also remembers what it holds in memory: its requests in flight, and failures it could
 * not write while the database was down.
 */
import { BroadcastChannel } from "node:worker_threads";
import type { IngestOutcome } from "../shared/task-protocol";
import { BatchStateWriter } from "./batch-state-rows";
import type { Database } from "./database";
import { daemonGoneSql } from "./daemon-presence";
import { BATCH_ALIAS_CHANNEL } from "../shared/task-protocol";
import { BATCHES_TABLE, qualifiedName } from "../shared/sql-identifiers";

export interface BatchStatusView {
  batch_id: string;
  stream: string;
  status: "pending" | "committed" | "partial" | "failed";
  received: number | null;
  accepted: number;
  rejected: number;
  duplicates: number;
  created_at: string;
  committed_at: string | null;
  message?: string;
}

/** Age past which a pending row of a daemon that holds no presence connection is reported failed. */
const ORPHAN_AFTER_SECONDS = 5;
const ORPHANED =
  "the daemon that took this request stopped before committing it (killed or crashed); nothing of it was stored: send it again";

/** Failed outcomes remembered in memory; older ones are forgotten first. */
const MAX_FAILED = 10_000;

export class BatchRegistry {
  private pending = new Map<string, { stream: string; createdAt: string }>();
  private failed = new Map<string, BatchStatusView>();
  /** Producer batch_id → request id, for requests still pending. */
  private aliases = new Map<string, string>();
  /** Requests answered 202: their id is known to the client before the outcome, so their state is written. */
  private published = new Set<string>();
  private readonly channel = new BroadcastChannel(BATCH_ALIAS_CHANNEL);
  private readonly table: string;
  private readonly writer: BatchStateWriter;

  constructor(
    private readonly db: Database,
    schema: string,
    /** This daemon's instance id, written in its pending rows (src/storage/daemon-presence.ts). */
    instance: string,
    onWriteError: (err: Error, rows: number) => void = () => undefined,
  ) {
    this.table = qualifiedName(schema, BATCHES_TABLE);
    this.writer = new BatchStateWriter(db, this.table, instance, onWriteError);
    this.channel.onmessage = (event) => {
      const [requestId, alias] = (event as MessageEvent).data as [string, string];
      // An announcement that arrives after the commit is stale: the table answers for it now.
      const p = this.pending.get(requestId);
      if (!p) return;
      this.aliases.set(alias, requestId);
      if (this.published.has(requestId)) void this.writer.write(this.stateRow(alias, requestId, p, "pending", null));
    };
    (this.channel as unknown as { unref(): void }).unref();
  }

  async close(): Promise<void> {
    this.channel.close();
    await this.writer.close();
  }

  begin(requestId: string, stream: string, receivedAtMs: number): void {
    this.pending.set(requestId, { stream, createdAt: new Date(receivedAtMs).toISOString() });
  }

  /**
   * The request is about to be answered 202: writes its `pending` row so that any daemon reports it.
   * Resolves false when the row could not be written (this daemon still answers for it).
   */
  publish(requestId: string): Promise<boolean> {
    const p = this.pending.get(requestId);
    if (!p) return Promise.resolve(true); // already settled: its outcome is written
    this.published.add(requestId);
    return this.writer.write(this.stateRow(requestId, requestId, p, "pending", null));
  }

  /**
   * The request settled: a committed outcome is in the table now; a failed commit wrote nothing, so a
   * published request's failure is written here (and remembered, for while the database is down).
   */
  settle(requestId: string, outcome: IngestOutcome): void {
    const p = this.pending.get(requestId);
    this.pending.delete(requestId);
    const aliases = [...this.aliases].filter(([, id]) => id === requestId).map(([alias]) => alias);
    for (const alias of aliases) this.aliases.delete(alias);
    const published = this.published.delete(requestId);
    // Other outcomes wrote their row in their own transaction (an unreadable body's included).
    const failure = outcome.kind === "db_unavailable" || outcome.kind === "failed" ? outcome.message : null;
    if (failure === null || !p) return;
    if (published) {
      // Under the producer's batch_id too, which a status query may use instead of the request id.
      for (const id of [requestId, ...aliases]) void this.writer.write(this.stateRow(id, requestId, p, "failed", failure));
    }
    if (this.failed.size >= MAX_FAILED) this.failed.delete(this.failed.keys().next().value!);
    this.failed.set(requestId, {
      batch_id: requestId,
      stream: p.stream,
      status: "failed",
      received: null,
      accepted: 0,
      rejected: 0,
      duplicates: 0,
      created_at: p.createdAt,
      committed_at: null,
      message: failure,
    });
  }

  private stateRow(
    batchId: string,
    requestId: string,
    p: { stream: string; createdAt: string },
    status: "pending" | "failed",
    message: string | null,
  ) {
    return { batchId, requestId, stream: p.stream, status, createdAt: p.createdAt, message };
  }

  async lookup(id: string): Promise<BatchStatusView | null> {
    const p = this.pending.get(id) ?? this.pending.get(this.aliases.get(id) ?? "");
    if (p) {
      return {
        batch_id: id,
        stream: p.stream,
        status: "pending",
        received: null,
        accepted: 0,
        rejected: 0,
        duplicates: 0,
        created_at: p.createdAt,
        committed_at: null,
      };
    }
    // Per request its outcome row if there is one, else its pending row; then the latest request. A pending
    // row whose daemon is gone (killed before the commit: its body was only in that daemon's memory) is
    // failed, once it is older than a reconnect of that daemon's presence connection could explain.
    const { rows } = await this.db.pool.query(
      `SELECT batch_id, stream, status, received, accepted, rejected, duplicates, created_at, committed_at, message,
              status = 'pending' AND daemon IS NOT NULL AND committed_at < now() - interval '${ORPHAN_AFTER_SECONDS} seconds'
                AND ${daemonGoneSql("daemon")} AS orphaned
         FROM (
         SELECT DISTINCT ON (request_id) batch_id, stream, status, received, accepted, rejected, duplicates, created_at,
                committed_at, message, daemon
           FROM ${this.table} WHERE batch_id = $1 OR request_id = $1
          ORDER BY request_id, status = 'pending', committed_at DESC) r
        ORDER BY created_at DESC LIMIT 1`,
      [id],
    );
    if (rows.length > 0) {
      const { orphaned, ...r } = rows[0];
      if (orphaned) {
        r.status = "failed";
        r.message = ORPHANED;
      }
      const { message, ...counts } = r;
      const pending = r.status === "pending";
      if (pending || message !== null) {
        // Written by a front thread, not by a commit: no commit time and no count.
        return {
          ...counts,
          batch_id: pending ? id : r.batch_id,
          received: null,
          created_at: r.created_at.toISOString(),
          committed_at: null,
          ...(pending ? {} : { message }),
        };
      }
      return { ...counts, created_at: r.created_at.toISOString(), committed_at: r.committed_at.toISOString() };
    }
    return this.failed.get(id) ?? null;
  }
}

/**
 * Batch status for `GET /v1/batches/{id}`. Committed outcomes live in `ingest_batches` (written in the
 * same transaction as the rows). What is not in the table yet is only known here: requests still in
 * flight (`pending`), and requests whose commit failed (`failed`, kept a while in memory because a failed
 * transaction by definition wrote nothing).
 */
import { BroadcastChannel } from "node:worker_threads";
import type { Database } from "./database";
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

/** Failed outcomes remembered in memory; older ones are forgotten first. */
const MAX_FAILED = 10_000;

export class BatchRegistry {
  private pending = new Map<string, { stream: string; createdAt: string }>();
  private failed = new Map<string, BatchStatusView>();
  /** Producer batch_id → request id, for requests still pending. */
  private aliases = new Map<string, string>();
  private readonly channel = new BroadcastChannel(BATCH_ALIAS_CHANNEL);
  private readonly table: string;

  constructor(
    private readonly db: Database,
    schema: string,
  ) {
    this.table = qualifiedName(schema, BATCHES_TABLE);
    this.channel.onmessage = (event) => {
      const [requestId, alias] = (event as MessageEvent).data as [string, string];
      // An announcement that arrives after the commit is stale: the table answers for it now.
      if (this.pending.has(requestId)) this.aliases.set(alias, requestId);
    };
    (this.channel as unknown as { unref(): void }).unref();
  }

  close(): void {
    this.channel.close();
  }

  begin(requestId: string, stream: string, receivedAtMs: number): void {
    this.pending.set(requestId, { stream, createdAt: new Date(receivedAtMs).toISOString() });
  }

  /** The request settled; a committed outcome is in the table now. */
  settle(requestId: string, failure: string | null): void {
    const p = this.pending.get(requestId);
    this.pending.delete(requestId);
    for (const [alias, id] of this.aliases) if (id === requestId) this.aliases.delete(alias);
    if (failure === null || !p) return;
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
    const { rows } = await this.db.pool.query(
      `SELECT batch_id, stream, status, received, accepted, rejected, duplicates, created_at, committed_at
         FROM ${this.table} WHERE batch_id = $1 OR request_id = $1 ORDER BY committed_at DESC LIMIT 1`,
      [id],
    );
    if (rows.length > 0) {
      const r = rows[0];
      return { ...r, created_at: r.created_at.toISOString(), committed_at: r.committed_at.toISOString() };
    }
    return this.failed.get(id) ?? null;
  }
}

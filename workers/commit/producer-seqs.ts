/**
 * Producer sessions inside a group commit (docs/websocket-protocol.md#producer-sessions). A transaction that
 * holds frames of producer sessions first locks their ingest_producers rows (in key order, so two workers
 * never deadlock on them) and decides each frame: stored now, already committed by an earlier attempt, or
 * refused because a newer session fenced its epoch. Before COMMIT it writes each session's new last seq.
 * The lock is what makes fencing airtight: a new session's epoch bump waits for this transaction, and this
 * transaction, once the bump committed, reads the new epoch.
 */
import type pg from "pg";
import { PRODUCERS_TABLE, qualifiedName } from "../../src/shared/sql-identifiers";

/** Which frame of which producer session a piece of group-commit work is. */
export interface SessionMark {
  stream: string;
  producer: string;
  epoch: number;
  seq: number;
}

/**
 * What the check decided for a frame that is not stored now: `committed` an earlier attempt stored it (a
 * commit whose answer was lost), `superseded` a newer session holds the producer, `out_of_order` an
 * earlier frame of the session is missing (never expected: the session is closed and resynchronises).
 */
export type SessionSkip = "committed" | "superseded" | "out_of_order";

export interface ProducerSql {
  lock: string;
  advance: string;
}

export function producerSql(schema: string): ProducerSql {
  const table = qualifiedName(schema, PRODUCERS_TABLE);
  return {
    // ORDER BY before FOR UPDATE: rows are locked in key order.
    lock:
      `SELECT stream, producer, epoch, committed_seq FROM ${table} WHERE (stream, producer) IN ` +
      `(SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY stream, producer FOR UPDATE`,
    advance:
      `UPDATE ${table} AS p SET committed_seq = v.seq, updated_at = now() ` +
      `FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(stream, producer, seq) WHERE p.stream = v.stream AND p.producer = v.producer`,
  };
}

const keyOf = (m: SessionMark) => `${m.stream}\u0000${m.producer}`;

/**
 * Locks the sessions' rows and decides each mark (in the order given, which is seq order per session);
 * returns the skips by position and the new last seq of every session with a frame stored now.
 */
export async function checkSessions(
  client: pg.ClientBase,
  sql: ProducerSql,
  marks: ReadonlyArray<SessionMark | null>,
): Promise<{ skips: Array<SessionSkip | null>; advance: Map<string, SessionMark> }> {
  const sessions = new Map<string, SessionMark>();
  for (const m of marks) if (m !== null && !sessions.has(keyOf(m))) sessions.set(keyOf(m), m);
  const list = [...sessions.values()];
  const locked = await client.query<{ stream: string; producer: string; epoch: string; committed_seq: string }>(sql.lock, [
    list.map((m) => m.stream),
    list.map((m) => m.producer),
  ]);
  /** Per session: its epoch in the database and the next seq it may commit. */
  const state = new Map<string, { epoch: number; next: number }>();
  for (const r of locked.rows) state.set(`${r.stream}\u0000${r.producer}`, { epoch: Number(r.epoch), next: Number(r.committed_seq) + 1 });
  const skips: Array<SessionSkip | null> = [];
  const advance = new Map<string, SessionMark>();
  for (const m of marks) {
    if (m === null) {
      skips.push(null);
      continue;
    }
    const key = keyOf(m);
    const s = state.get(key);
    if (s === undefined || s.epoch !== m.epoch) skips.push("superseded");
    else if (m.seq < s.next) skips.push("committed");
    else if (m.seq > s.next) skips.push("out_of_order");
    else {
      skips.push(null);
      s.next++;
      advance.set(key, m);
    }
  }
  return { skips, advance };
}

/** Writes each session's last stored seq; its row is locked by checkSessions in this transaction. */
export async function advanceSessions(client: pg.ClientBase, sql: ProducerSql, advance: Map<string, SessionMark>): Promise<void> {
  if (advance.size === 0) return;
  const list = [...advance.values()];
  await client.query(sql.advance, [list.map((m) => m.stream), list.map((m) => m.producer), list.map((m) => m.seq)]);
}

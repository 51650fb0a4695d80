/**
 * The ingest_producers rows of producer sessions, as the front thread sees them (docs/websocket-protocol.md#producer-sessions):
 * opening a session fences every older one, and rows of producers idle for long are forgotten in small steps.
 * The workers lock and advance the same rows inside their commits (workers/commit/producer-seqs.ts).
 */
import type pg from "pg";
import { PRODUCERS_TABLE, qualifiedName } from "../shared/sql-identifiers";
import { holdConnection, type HeldConnection } from "./held-connection";

/** Other daemons on the database hear of each new session here, and close their superseded socket at once. */
export const PRODUCER_CHANNEL = "ingestd_producers";

export interface OpenedSession {
  epoch: number;
  /** The highest frame seq this producer has committed on this stream (0 for a new producer). */
  committedSeq: number;
}

/**
 * Takes the producer over: bumps its epoch (one short transaction). The row lock orders this against every
 * commit of the older sessions, so the committed seq returned includes everything they will ever commit:
 * a commit that runs later sees the new epoch and stores nothing.
 */
export async function fenceProducer(db: pg.Pool, schema: string, stream: string, producer: string): Promise<OpenedSession> {
  const table = qualifiedName(schema, PRODUCERS_TABLE);
  const { rows } = await db.query<{ epoch: string; committed_seq: string }>({
    text:
      `WITH f AS (INSERT INTO ${table} AS p (stream, producer, epoch) VALUES ($1, $2, 1) ` +
      `ON CONFLICT (stream, producer) DO UPDATE SET epoch = p.epoch + 1, updated_at = now() RETURNING epoch, committed_seq) ` +
      `SELECT epoch, committed_seq, pg_notify($3, json_build_array($1::text, $2::text, epoch)::text) FROM f`,
    values: [stream, producer, PRODUCER_CHANNEL],
  });
  return { epoch: Number(rows[0].epoch), committedSeq: Number(rows[0].committed_seq) };
}

/**
 * Deletes up to `limit` rows of producers idle for `days` (an index on updated_at finds them): a cheap,
 * bounded step run now and then. A producer that returns after that starts over at committed_seq 0.
 */
export async function forgetIdleProducers(db: pg.Pool, schema: string, days: number, limit = 1000): Promise<number> {
  const table = qualifiedName(schema, PRODUCERS_TABLE);
  const result = await db.query(
    `DELETE FROM ${table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM ${table} WHERE updated_at < now() - make_interval(days => $1) LIMIT $2))`,
    [days, limit],
  );
  return result.rowCount ?? 0;
}

export type SessionListener = HeldConnection;

/**
 * LISTENs for sessions opened by any daemon on the database and reports (stream, producer, epoch). Only a
 * courtesy that closes a superseded socket early: fencing itself is the epoch in the row. A lost connection
 * is opened again after a short pause.
 */
export function listenForSessions(
  connectionString: string,
  onSession: (stream: string, producer: string, epoch: number) => void,
): SessionListener {
  return holdConnection({
    connectionString,
    applicationName: "ingestd-sessions",
    reconnectMs: 2000,
    prepare: (c) =>
      c.on("notification", (n) => {
        try {
          const [stream, producer, epoch] = JSON.parse(n.payload ?? "") as [string, string, number];
          onSession(stream, producer, Number(epoch));
        } catch {
          // Not ours.
        }
      }),
    ready: (c) => c.query(`LISTEN ${PRODUCER_CHANNEL}`),
  });
}

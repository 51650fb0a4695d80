/**
 * Builds the Bloom filter of each sealed partition of the id state (docs/storage.md#deduplication) and keeps it
 * in the slots table beside the partition, where the workers load it. A partition is sealed once no claim can
 * write to it any more: its slot ended, the grace period after it passed, and so did the longest a claim may
 * take to commit. Each filter is built once, by whichever daemon's maintenance gets there first.
 */
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { DedupFilter } from "../shared/dedup-filter";
import { DEDUP_CLAIM_TO_COMMIT_SECONDS, DEDUP_GRACE_SECONDS, DEDUP_KEY_COLUMN, dedupShape } from "../shared/dedup-sql";
import type { StreamDefinition } from "../shared/stream-definition";
import { quoteIdent } from "../shared/sql-identifiers";
import { locked } from "./partitions";

/** Adds every key of a partition to a filter, streaming them (a partition may hold millions). */
async function fillFilter(client: pg.ClientBase, part: string, filter: DedupFilter): Promise<void> {
  const stream = client.query(copyTo(`COPY (SELECT ${quoteIdent(DEDUP_KEY_COLUMN)} FROM ${part}) TO STDOUT`));
  let rest = "";
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    const text = rest + chunk.toString("latin1");
    let from = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", from)) {
      filter.add(text.slice(from, nl));
      from = nl + 1;
    }
    rest = text.slice(from);
  }
}

/** Builds the missing filters of the sealed partitions of one stream's id state; returns their partitions. */
export async function buildDedupFilters(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const sealedBefore = new Date(at.getTime() - (DEDUP_GRACE_SECONDS + DEDUP_CLAIM_TO_COMMIT_SECONDS) * 1000);
  const { rows } = await client.query<{ part: string; lower: Date }>(
    `SELECT part, lower FROM ${d.slots} WHERE filter IS NULL AND upper <= $1 ORDER BY lower`,
    [sealedBefore.toISOString()],
  );
  const built: string[] = [];
  for (const slot of rows) {
    const done = await locked(client, async () => {
      const still = await client.query(`SELECT 1 FROM ${d.slots} WHERE lower = $1 AND filter IS NULL`, [slot.lower]);
      if (still.rowCount === 0) return false; // another daemon built it, or the partition was dropped
      const count = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${slot.part}`);
      const filter = new DedupFilter(Number(count.rows[0].n));
      await fillFilter(client, slot.part, filter);
      await client.query(`UPDATE ${d.slots} SET filter = $2 WHERE lower = $1`, [slot.lower, Buffer.from(filter.bytes())]);
      return true;
    });
    if (done) built.push(slot.part);
  }
  return built;
}

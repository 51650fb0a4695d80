/**
 * The SQL of a deduplicating stream's id state that both sides must agree on: its tables, the claim function
 * the schema creates at start and the workers call in every group commit. Defined once here so they cannot
 * drift. Design and measurements: docs/storage.md#deduplication.
 *
 * The id state of a stream is `<table>_dedup`, range-partitioned by the time an id was first stored
 * (`stored_at`, the database's clock), one partition per slot (a fraction of the window); each partition has
 * its own unique index on the 16-byte key (src/shared/dedup-key.ts). `<table>_dedup_slots` lists the
 * partitions (the claim function finds the current one there) and, once a partition is sealed, its Bloom
 * filter (src/shared/dedup-filter.ts). New ids go into the current partition, which stays small and hot;
 * older partitions are only probed, and with their filters loaded by the worker only for the ids that hit one.
 */
import type { StreamDefinition } from "./stream-definition";
import { dedupTable, qualifiedName } from "./sql-identifiers";

/** Column names of the id state's partitions. */
export const DEDUP_KEY_COLUMN = "id_key";
export const DEDUP_STORED_AT_COLUMN = "stored_at";

/**
 * After a new slot starts, claims also insert into the previous slot's partition for this long, so a claim
 * just after the boundary waits for (and sees) a concurrent transaction's uncommitted insert of the same id
 * into the previous partition. Must exceed the time from a claim to its commit, which the claim bounds with
 * `transaction_timeout` (PostgreSQL 17 and later) to DEDUP_CLAIM_TO_COMMIT_SECONDS.
 */
export const DEDUP_GRACE_SECONDS = 600;
export const DEDUP_CLAIM_TO_COMMIT_SECONDS = 300;

/** The table listing a stream's id-state partitions and their filters. */
export function dedupSlotsTable(table: string): string {
  return `${dedupTable(table)}_slots`;
}

/** The function that claims a batch's ids for a deduplicating stream (created at start by src/storage/schema.ts). */
export function dedupClaimFunction(table: string): string {
  return `${dedupTable(table)}_claim`;
}

export interface DedupShape {
  /** Qualified id-state (partitioned) table. */
  ids: string;
  /** Qualified slots table. */
  slots: string;
  /** Qualified claim function. */
  claim: string;
}

export function dedupShape(schema: string, stream: StreamDefinition): DedupShape | null {
  if (!stream.columns.some((c) => c.name === stream.dedupKey)) return null;
  return {
    ids: qualifiedName(schema, dedupTable(stream.table)),
    slots: qualifiedName(schema, dedupSlotsTable(stream.table)),
    claim: qualifiedName(schema, dedupClaimFunction(stream.table)),
  };
}

/**
 * `CREATE OR REPLACE FUNCTION` of the stream's claim function, or null when the stream has no dedup key.
 *
 * `claim_keys` are the batch's keys in row order; `covered` the lower bounds of the partitions whose filters
 * the worker checked, and `maybe_keys` / `maybe_slots` each key that hit one of those filters with the
 * 1-based position in `covered` of the filter it hit (a key may hit several). Null: no filter,
 * every older partition is probed with every key). Returns the 1-based positions of the rows whose id it did NOT
 * record (stored before, or a later copy within the batch).
 *
 * The common batch holds no known id and none twice: one plain INSERT into the current partition records
 * them all (cheaper than ON CONFLICT, whose speculative insertion writes an extra WAL record per row). Any
 * id stored meanwhile (committed, or inserted by a concurrent transaction that then commits: the INSERT waits
 * for it) makes it fail on the unique index; its subtransaction is rolled back and the batch is claimed with
 * ON CONFLICT DO NOTHING instead, where the first copy of an id within the batch wins. Either way a unique
 * index decides who stored an id.
 *
 * Inserts go in (partition, id) order: a transaction only ever waits for another's uncommitted id while
 * holding smaller ones itself, so two claims can never wait for each other (no deadlock between workers or
 * daemons whose batches share ids in different orders).
 */
export function dedupClaimFunctionDdl(schema: string, stream: StreamDefinition): string | null {
  const d = dedupShape(schema, stream);
  if (d === null) return null;
  const key = DEDUP_KEY_COLUMN;
  const at = DEDUP_STORED_AT_COLUMN;
  return `CREATE OR REPLACE FUNCTION ${d.claim}(
  claim_keys uuid[], maybe_keys uuid[] DEFAULT NULL, maybe_slots integer[] DEFAULT NULL, covered timestamptz[] DEFAULT NULL
)
RETURNS SETOF integer
LANGUAGE plpgsql AS $claim$
DECLARE
  claim_at timestamptz := clock_timestamp();
  cur_part text;
  cur_lower timestamptz;
  prev_part text;
  prev_lower timestamptz;
  probe_before timestamptz;
  found_keys uuid[] := '{}';
  probe_found uuid[];
  probe_keys uuid[];
  covered_at integer;
  probe_part text;
  probe_lower timestamptz;
  prev_held uuid[];
BEGIN
  SELECT s.part, s.lower INTO cur_part, cur_lower FROM ${d.slots} s WHERE s.lower <= claim_at AND claim_at < s.upper;
  IF cur_part IS NULL THEN
    RAISE EXCEPTION 'no partition of ${d.ids.replace(/'/g, "''")} holds %: partition maintenance has not run', claim_at;
  END IF;
  probe_before := cur_lower;
  IF claim_at < cur_lower + interval '${DEDUP_GRACE_SECONDS} seconds' THEN
    SELECT s.part, s.lower INTO prev_part, prev_lower FROM ${d.slots} s WHERE s.upper = cur_lower;
    IF prev_part IS NOT NULL THEN
      probe_before := prev_lower;
    END IF;
  END IF;
  -- Bounds the time from here to COMMIT below the grace period (docs/storage.md#deduplication).
  IF current_setting('server_version_num')::integer >= 170000 THEN
    PERFORM set_config('transaction_timeout', '${DEDUP_CLAIM_TO_COMMIT_SECONDS}s', true);
  END IF;
  -- Older partitions: a covered one (its filter was checked by the worker) only for the keys that hit it.
  FOR probe_part, probe_lower IN SELECT s.part, s.lower FROM ${d.slots} s WHERE s.lower < probe_before ORDER BY s.lower LOOP
    probe_found := NULL;
    covered_at := array_position(covered, probe_lower);
    IF covered_at IS NOT NULL THEN
      SELECT array_agg(m.k) INTO probe_keys FROM unnest(maybe_keys, maybe_slots) AS m(k, s) WHERE m.s = covered_at;
      IF probe_keys IS NOT NULL THEN
        EXECUTE format('SELECT array_agg(i.${key}) FROM %s i WHERE i.${key} = ANY($1)', probe_part) INTO probe_found USING probe_keys;
      END IF;
    ELSE
      EXECUTE format('SELECT array_agg(i.${key}) FROM %s i WHERE i.${key} = ANY($1)', probe_part) INTO probe_found USING claim_keys;
    END IF;
    IF probe_found IS NOT NULL THEN
      found_keys := found_keys || probe_found;
    END IF;
  END LOOP;
  IF prev_part IS NOT NULL THEN
    -- Just after a boundary: the previous partition's unique index judges too.
    EXECUTE format($prev$
      WITH c AS (SELECT DISTINCT u.k FROM unnest($1) AS u(k) WHERE u.k NOT IN (SELECT unnest($2))),
      ins AS (INSERT INTO %s AS p (${key}, ${at}) SELECT c.k, $3 FROM c ORDER BY c.k ON CONFLICT (${key}) DO NOTHING RETURNING p.${key})
      SELECT coalesce(array_agg(c.k), '{}') FROM c WHERE c.k NOT IN (SELECT ins.${key} FROM ins)$prev$, prev_part)
      INTO prev_held USING claim_keys, found_keys, cur_lower - interval '1 microsecond';
    found_keys := found_keys || prev_held;
  ELSIF cardinality(found_keys) = 0 THEN
    BEGIN
      EXECUTE format('INSERT INTO %s (${key}, ${at}) SELECT u.k, $2 FROM unnest($1) AS u(k) ORDER BY u.k', cur_part)
        USING claim_keys, claim_at;
      RETURN;
    EXCEPTION WHEN unique_violation THEN
      -- Some id is stored already (or twice in the batch): claim row by row below.
    END;
  END IF;
  RETURN QUERY EXECUTE format($slow$
    WITH claim_input AS (SELECT * FROM unnest($1) WITH ORDINALITY AS u(claim_k, claim_n)),
    firsts AS (
      SELECT DISTINCT ON (claim_k) claim_k, claim_n FROM claim_input
       WHERE claim_k NOT IN (SELECT unnest($2)) ORDER BY claim_k, claim_n
    ),
    claimed AS (
      INSERT INTO %s AS c (${key}, ${at}) SELECT claim_k, $3 FROM firsts ORDER BY claim_k
      ON CONFLICT (${key}) DO NOTHING RETURNING c.${key} AS claim_k
    )
    SELECT claim_input.claim_n::integer FROM claim_input
     WHERE NOT EXISTS (
       SELECT 1 FROM firsts JOIN claimed ON claimed.claim_k = firsts.claim_k WHERE firsts.claim_n = claim_input.claim_n
     )$slow$, cur_part) USING claim_keys, found_keys, claim_at;
END
$claim$`;
}

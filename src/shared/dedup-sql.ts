/**
 * The SQL of a deduplicating stream's id state that both sides must agree on: its tables, the claim function
 * the schema creates at start and the workers call in every group commit. Defined once here so they cannot
 * drift. Design and measurements: docs/storage.md#deduplication.
 *
 * The id state of a stream is `<table>_dedup`, list-partitioned by generation (`gen`), one partition per
 * generation; each partition has its own unique index on the 16-byte key (src/shared/dedup-key.ts).
 * `<table>_dedup_slots` lists the generations: the one open generation takes every new id, and is sealed
 * (a new one opened) once its index outgrows a share of shared_buffers or it has been open an eighth of the
 * window, so the index random ids are inserted into stays small and in memory. A sealed generation is only
 * probed, and with its cuckoo filter (src/shared/dedup-filter.ts), or the filter of the group of generations it
 * belongs to (`<table>_dedup_groups`), checked by the worker only for the ids that hit it; it is dropped whole
 * once it was sealed more than the window ago.
 */
import type { StreamDefinition } from "./stream-definition";
import { dedupTable, qualifiedName, quoteIdent } from "./sql-identifiers";

/** Column names of the id state's partitions. */
export const DEDUP_KEY_COLUMN = "id_key";
export const DEDUP_GEN_COLUMN = "gen";

/**
 * First key of the advisory lock a claim holds shared until its transaction ends and a rotation takes
 * exclusively (the second key is the stream's, from hashtext of its table): a rotation therefore waits for
 * every claim into the old generation to commit or roll back, so no id is ever claimed in two generations
 * at once (docs/storage.md#deduplication).
 */
export const DEDUP_ROTATION_LOCK = 0x1d3d;

/**
 * Generations numbered up to this one were adopted from the time-slot shape of the id state
 * (src/storage/dedup-partitions.ts, migrateLegacyIdState): their partitions are not under the parent table, so
 * the claim probes them by name; every generation created since is numbered above.
 */
export const LAST_ADOPTED_GENERATION = 0;

/** The claim function's parameters and result as pg_get_function_identity_arguments / _result spell them (another is dropped at start). */
export const DEDUP_CLAIM_ARGUMENTS = "claim_keys uuid[], maybe_keys uuid[], maybe_gens integer[], covered integer[]";
export const DEDUP_CLAIM_RESULT = "SETOF integer";

/** The table listing a stream's id-state generations and their filters. */
export function dedupSlotsTable(table: string): string {
  return `${dedupTable(table)}_slots`;
}

/**
 * The column of the slots table holding a sealed generation's filter, and (dedupGroupsTable) the table of group
 * filters, both named after the filters' format. Format 3 is a cuckoo filter (src/shared/dedup-filter.ts);
 * formats 1 and 2 were blocked Bloom filters (columns `filter`, `filter_v2`, tables `<table>_dedup_groups`,
 * `<table>_dedup_groups_v2`): a filter read as another format answers wrongly, so daemons of different formats
 * sharing a database never read each other's filters; each builds its own (docs/storage.md#filter-format).
 */
export const DEDUP_FILTER_COLUMN = "filter_v3";
/** DEDUP_FILTER_COLUMN quoted, as the statements that read and write it spell it. */
export const DEDUP_FILTER_IDENT = quoteIdent(DEDUP_FILTER_COLUMN);

/**
 * The column of the groups table holding a closed group's sealed filter (src/shared/fuse-filter.ts), beside its
 * cuckoo filter, which daemons of earlier releases go on reading; empty when its keys could not be sealed
 * (the group keeps its cuckoo filter). docs/storage.md#sealed-group-filters.
 */
export const DEDUP_SEALED_COLUMN = "sealed_v1";
export const DEDUP_SEALED_IDENT = quoteIdent(DEDUP_SEALED_COLUMN);

/** The table of a stream's group filters (format 3): one filter over the keys of several sealed generations. */
export function dedupGroupsTable(table: string): string {
  return `${dedupTable(table)}_groups_v3`;
}

/** Earlier formats' tables of group filters: each emptied and dropped once its generations are gone (dropDedupGenerations). */
export function dedupLegacyGroupsTables(table: string): string[] {
  return [`${dedupTable(table)}_groups`, `${dedupTable(table)}_groups_v2`];
}

/** The function that claims a batch's ids for a deduplicating stream (created at start by src/storage/schema.ts). */
export function dedupClaimFunction(table: string): string {
  return `${dedupTable(table)}_claim`;
}

/** The function that opens a claim: rotation lock, open generation, probes of the filters' hits (dedupProbeFunctionDdl). */
export function dedupProbeFunction(table: string): string {
  return `${dedupTable(table)}_probe`;
}

/** The probe function's parameters and result as pg_get_function_identity_arguments / _result spell them. */
export const DEDUP_PROBE_ARGUMENTS = "maybe_keys uuid[], maybe_gens integer[], covered integer[]";
export const DEDUP_PROBE_RESULT = "TABLE(open_gen integer, open_part text, stored_keys integer, uncovered boolean)";

/** The function that opens a claim on the one-trip path: the probe function's checks, raising where they fail (dedupEnterFunctionDdl). */
export function dedupEnterFunction(table: string): string {
  return `${dedupTable(table)}_enter`;
}

/** The enter function's parameters and result as pg_get_function_identity_arguments / _result spell them. */
export const DEDUP_ENTER_ARGUMENTS = "expected_gen integer, maybe_keys uuid[], maybe_gens integer[], covered integer[]";
export const DEDUP_ENTER_RESULT = "void";

/**
 * SQLSTATE the enter function raises when a claim cannot take the one-trip path: the open generation is not the
 * one the worker expected, a sealed generation has no filter in the worker, or a key that hit an adopted
 * generation's filter is stored there. The worker rolls back and claims the batch the long way.
 */
export const DEDUP_NOT_ENTERED = "IGD01";

/** The binary COPY of a batch's keys into the open generation (rows: key, generation; workers/commit/id-claim.ts). */
export function dedupKeysCopySql(part: string): string {
  return `COPY ${part} (${DEDUP_KEY_COLUMN}, ${DEDUP_GEN_COLUMN}) FROM STDIN (FORMAT binary)`;
}

/** The partition of generation `gen`: `<table>_dedup_g42`. */
export function dedupGenerationName(table: string, gen: number): string {
  return `${dedupTable(table)}_g${gen}`;
}

export interface DedupShape {
  /** Qualified id-state (partitioned) table. */
  ids: string;
  /** Qualified slots table. */
  slots: string;
  /** Qualified group-filters table. */
  groups: string;
  /** Qualified claim function. */
  claim: string;
  /** Qualified probe function. */
  probe: string;
  /** Qualified enter function. */
  enter: string;
  /** SQL arguments of the rotation lock: `DEDUP_ROTATION_LOCK, hashtext('<table>')`. */
  lockArgs: string;
}

export function dedupShape(schema: string, stream: StreamDefinition): DedupShape | null {
  if (!stream.columns.some((c) => c.name === stream.dedupKey)) return null;
  return {
    ids: qualifiedName(schema, dedupTable(stream.table)),
    slots: qualifiedName(schema, dedupSlotsTable(stream.table)),
    groups: qualifiedName(schema, dedupGroupsTable(stream.table)),
    claim: qualifiedName(schema, dedupClaimFunction(stream.table)),
    probe: qualifiedName(schema, dedupProbeFunction(stream.table)),
    enter: qualifiedName(schema, dedupEnterFunction(stream.table)),
    lockArgs: `${DEDUP_ROTATION_LOCK}, hashtext('${qualifiedName(schema, dedupTable(stream.table)).replace(/'/g, "''")}')`,
  };
}

/**
 * The statement that counts the keys stored among the filters' hits in generations under the parent table
 * (`$1` keys, `$2` the generation of each, as FilterCheck gives them): each key probed only in the generation
 * whose filter it hit, those of one generation by one index scan, all in one statement. It replaced a loop of
 * one dynamic query per generation in the probe function, planned anew each time: with 140 sealed generations
 * that loop cost a batch of 3,000 keys ~19 ms against ~4.5 (docs/storage.md#what-it-costs-measured). A worker
 * runs it before its transaction begins: a statement over the parent holds a lock on it until its transaction
 * ends, and the DDL of the partition maintenance (creating and dropping generations) would queue behind a long
 * group commit, and every claim behind that DDL. Sealed generations are never written again, so probing them
 * outside the transaction answers the same. Generations adopted from the time-slot shape are not under the
 * parent: the probe function probes their hits.
 *
 * Two forms, the same answer. `pruned` false: prepared once per connection (its plan kept), the partition of
 * each generation picked at run time, but every partition opened by every call (~16 µs each). `pruned` true:
 * `$3` the generations hit, planned with each call so that only their partitions are opened (~70 µs each,
 * planning included): cheaper when few of many generations were hit (IdClaim's choice; measured in
 * docs/storage.md#what-it-costs-measured).
 */
export function dedupHitsProbeSql(d: DedupShape, pruned = false): string {
  const key = DEDUP_KEY_COLUMN;
  const gen = DEDUP_GEN_COLUMN;
  // The count inside the LATERAL keeps the planner from pulling it up into a join, which it may then plan as a
  // hash join over a scan of every generation (seconds) instead of one index scan each.
  return `SELECT coalesce(sum(x.n), 0)::integer AS stored FROM (
      SELECT m.g, array_agg(m.k) AS ks FROM unnest($1::uuid[], $2::integer[]) AS m(k, g)
       WHERE m.g > ${LAST_ADOPTED_GENERATION} GROUP BY m.g
    ) AS m CROSS JOIN LATERAL (
      SELECT count(*) AS n FROM ${d.ids} i WHERE i.${gen} = m.g${pruned ? ` AND i.${gen} = ANY($3::integer[])` : ""} AND i.${key} = ANY(m.ks)
    ) AS x`;
}

/**
 * `CREATE OR REPLACE FUNCTION` of the stream's claim function, or null when the stream has no dedup key.
 *
 * `claim_keys` are the batch's keys in row order; `covered` the sealed generations whose filters the worker
 * checked, and `maybe_keys` / `maybe_gens` each key that hit one of those filters with the generation of the
 * filter it hit (a key may hit several). Null: no filter, every sealed generation is probed with every key.
 * Returns the 1-based positions of the rows whose id it did NOT record (stored before, or a later copy within
 * the batch).
 *
 * The common batch holds no known id and none twice: one plain INSERT into the open generation records them
 * all (cheaper than ON CONFLICT, whose speculative insertion writes an extra WAL record per row). Any id
 * stored meanwhile (committed, or inserted by a concurrent transaction that then commits: the INSERT waits
 * for it) makes it fail on the unique index; its subtransaction is rolled back and the batch is claimed with
 * ON CONFLICT DO NOTHING instead, where the first copy of an id within the batch wins. Either way a unique
 * index decides who stored an id.
 *
 * Inserts go in id order: a transaction only ever waits for another's uncommitted id while holding smaller
 * ones itself, so two claims can never wait for each other (no deadlock between workers or daemons whose
 * batches share ids in different orders).
 */
export function dedupClaimFunctionDdl(schema: string, stream: StreamDefinition): string | null {
  const d = dedupShape(schema, stream);
  if (d === null) return null;
  const key = DEDUP_KEY_COLUMN;
  const gen = DEDUP_GEN_COLUMN;
  return `CREATE OR REPLACE FUNCTION ${d.claim}(
  claim_keys uuid[], maybe_keys uuid[] DEFAULT NULL, maybe_gens integer[] DEFAULT NULL, covered integer[] DEFAULT NULL
)
RETURNS SETOF integer
LANGUAGE plpgsql AS $claim$
DECLARE
  cur_gen integer;
  cur_part text;
  found_keys uuid[] := '{}';
  probe_found uuid[];
  probe_keys uuid[];
  probe_gen integer;
  probe_part text;
BEGIN
  -- Held until the transaction ends: a rotation waits for it (docs/storage.md#deduplication). Taken before
  -- reading the slots table, so a claim after a rotation sees the new generation.
  PERFORM pg_advisory_xact_lock_shared(${d.lockArgs});
  SELECT s.gen, s.part INTO cur_gen, cur_part FROM ${d.slots} s WHERE s.sealed_at IS NULL AND s.opened_at IS NOT NULL;
  IF cur_part IS NULL THEN
    RAISE EXCEPTION 'no open generation of ${d.ids.replace(/'/g, "''")}: partition maintenance has not run';
  END IF;
  -- Sealed generations: one whose filter the worker checked only for the keys that hit it, any other (its
  -- filter not built or not loaded yet) for every key.
  FOR probe_gen, probe_part IN
    SELECT s.gen, s.part FROM ${d.slots} s
     WHERE s.sealed_at IS NOT NULL
       AND (covered IS NULL OR NOT (s.gen = ANY(covered)) OR s.gen = ANY(maybe_gens))
     ORDER BY s.gen
  LOOP
    IF covered IS NOT NULL AND probe_gen = ANY(covered) THEN
      SELECT array_agg(m.k) INTO probe_keys FROM unnest(maybe_keys, maybe_gens) AS m(k, g) WHERE m.g = probe_gen;
    ELSE
      probe_keys := claim_keys;
    END IF;
    EXECUTE format('SELECT array_agg(i.${key}) FROM %s i WHERE i.${key} = ANY($1)', probe_part) INTO probe_found USING probe_keys;
    IF probe_found IS NOT NULL THEN
      found_keys := found_keys || probe_found;
    END IF;
  END LOOP;
  IF cardinality(found_keys) = 0 THEN
    BEGIN
      EXECUTE format('INSERT INTO %s (${key}, ${gen}) SELECT u.k, $2 FROM unnest($1) AS u(k) ORDER BY u.k', cur_part)
        USING claim_keys, cur_gen;
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
      INSERT INTO %s AS c (${key}, ${gen}) SELECT claim_k, $3 FROM firsts ORDER BY claim_k
      ON CONFLICT (${key}) DO NOTHING RETURNING c.${key} AS claim_k
    )
    SELECT claim_input.claim_n::integer FROM claim_input
     WHERE NOT EXISTS (
       SELECT 1 FROM firsts JOIN claimed ON claimed.claim_k = firsts.claim_k WHERE firsts.claim_n = claim_input.claim_n
     )$slow$, cur_part) USING claim_keys, found_keys, cur_gen;
END
$claim$`;
}

/**
 * `CREATE OR REPLACE FUNCTION` of the stream's probe function, or null when the stream has no dedup key: the
 * first statement of a claim on the fast path (workers/commit/id-claim.ts). Takes the rotation lock shared
 * (held to the end of the transaction, as the claim function does), reads the open generation and, when the
 * worker's filters covered every sealed generation, probes each sealed generation for the keys that hit its
 * filter. Returns the open generation, its partition, how many of the keys it found stored, and `uncovered`: a sealed
 * generation the worker had no filter for (then nothing was probed, and the claim function must do it all).
 * When nothing was found the worker COPYs the keys into `open_part` itself, in binary, without sending them as
 * an array to be parsed and inserted row by row by an INSERT.
 */
export function dedupProbeFunctionDdl(schema: string, stream: StreamDefinition): string | null {
  const d = dedupShape(schema, stream);
  if (d === null) return null;
  const key = DEDUP_KEY_COLUMN;
  return `CREATE OR REPLACE FUNCTION ${d.probe}(maybe_keys uuid[], maybe_gens integer[], covered integer[])
RETURNS TABLE (open_gen integer, open_part text, stored_keys integer, uncovered boolean)
LANGUAGE plpgsql AS $probe$
DECLARE
  probe_found uuid[];
  probe_keys uuid[];
  probe_gen integer;
  probe_part text;
BEGIN
  PERFORM pg_advisory_xact_lock_shared(${d.lockArgs});
  SELECT s.gen, s.part INTO open_gen, open_part FROM ${d.slots} s WHERE s.sealed_at IS NULL AND s.opened_at IS NOT NULL;
  IF open_part IS NULL THEN
    RAISE EXCEPTION 'no open generation of ${d.ids.replace(/'/g, "''")}: partition maintenance has not run';
  END IF;
  stored_keys := 0;
  uncovered := EXISTS (SELECT 1 FROM ${d.slots} s WHERE s.sealed_at IS NOT NULL AND (covered IS NULL OR NOT (s.gen = ANY(covered))));
  IF NOT uncovered THEN
    FOR probe_gen, probe_part IN
      SELECT s.gen, s.part FROM ${d.slots} s WHERE s.sealed_at IS NOT NULL AND s.gen = ANY(maybe_gens) ORDER BY s.gen
    LOOP
      SELECT array_agg(m.k) INTO probe_keys FROM unnest(maybe_keys, maybe_gens) AS m(k, g) WHERE m.g = probe_gen;
      EXECUTE format('SELECT array_agg(i.${key}) FROM %s i WHERE i.${key} = ANY($1)', probe_part) INTO probe_found USING probe_keys;
      stored_keys := stored_keys + coalesce(cardinality(probe_found), 0);
    END LOOP;
  END IF;
  RETURN NEXT;
END
$probe$`;
}

/**
 * `CREATE OR REPLACE FUNCTION` of the stream's enter function, or null when the stream has no dedup key: the
 * first statement of a claim on the one-trip path (workers/commit/id-claim.ts), which sends the transaction's
 * BEGIN, this call, the COPY of the keys into the open generation the worker expects (`expected_gen`, learnt
 * from the probe function's last answer), the rows' COPY and the COMMIT in one Query. It runs the probe
 * function (the rotation lock taken shared until the transaction ends, so the generation it checked stays open
 * until the COPY is committed) and raises DEDUP_NOT_ENTERED where the probe's answer would have taken the
 * worker off the fast path; PostgreSQL then skips the rest of the Query.
 */
export function dedupEnterFunctionDdl(schema: string, stream: StreamDefinition): string | null {
  const d = dedupShape(schema, stream);
  if (d === null) return null;
  return `CREATE OR REPLACE FUNCTION ${d.enter}(expected_gen integer, maybe_keys uuid[], maybe_gens integer[], covered integer[])
RETURNS void
LANGUAGE plpgsql AS $enter$
DECLARE
  p record;
BEGIN
  SELECT * INTO p FROM ${d.probe}(maybe_keys, maybe_gens, covered);
  IF p.open_gen IS DISTINCT FROM expected_gen OR p.uncovered OR p.stored_keys > 0 THEN
    RAISE EXCEPTION 'claim not entered: generation % open (expected %), uncovered %, % stored', p.open_gen, expected_gen, p.uncovered, p.stored_keys
      USING ERRCODE = '${DEDUP_NOT_ENTERED}';
  END IF;
END
$enter$`;
}

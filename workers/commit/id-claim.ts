/**
 * Claiming a batch's ids in its stream's id state before its rows are copied (docs/storage.md#deduplication).
 *
 * The common batch holds no id stored before and none twice. Its claim is then three statements: before the
 * transaction, the probe of the keys that hit a sealed generation's filter (probeFilterHits; one statement over
 * the id state's parent table), then in it the probe function (rotation lock, open generation, generations
 * without a filter: src/shared/dedup-sql.ts) and a binary COPY of the keys, sorted, into the open generation
 * inside a savepoint. The unique index decides as before: an id stored meanwhile, or twice in the batch, fails the
 * COPY, which is rolled back to the savepoint, and the claim function then claims the batch key by key
 * (ON CONFLICT DO NOTHING, the first copy of an id in the batch wins). The claim function alone serves a
 * worker that has not received the filters yet, and a batch whose probes found a stored id.
 *
 * Measured (docs/storage.md#deduplication): the COPY costs PostgreSQL about 0.8 µs less per id than the
 * INSERT ... SELECT FROM unnest($1::uuid[]) it replaces (no array to parse, heap pages filled many rows per
 * WAL record, the sort done here).
 */
import type pg from "pg";
import { keyPrefix, writeKeyBytes } from "../../src/shared/dedup-key";
import { dedupKeysCopySql, LAST_ADOPTED_GENERATION } from "../../src/shared/dedup-sql";
import { copyIn } from "./copy-in";
import type { FilterCheck } from "./id-filters";

export interface ClaimSql {
  /**
   * `$1` keys that hit a filter, `$2` the generation of each hit: how many are stored (src/shared/dedup-sql.ts),
   * outside the transaction. Named: prepared once per connection, its plan kept, where planning it anew over a
   * hundred partitions cost ~10 ms a call. `pruned`: the same with `$3` the generations hit, planned with
   * each call and opening only their partitions (probeFilterHits picks it when few generations were hit).
   */
  hits: { name: string; text: string; pruned: string };
  /** The probe function's call on the keys that hit a filter, the generation of each hit, the generations covered: one row (ProbeRow). */
  probeCall(maybe: readonly string[], gens: readonly number[], covered: readonly number[]): string;
  /** `$1` keys in row order, `$2`-`$4` as probeCall's: returns `n`, the 1-based position of each row it did NOT record. */
  claim: string;
  /** The enter function's call (oneTripClaim): probeCall's checks, raising unless `expectedGen` is open and they pass. */
  enterCall(expectedGen: number, maybe: readonly string[], gens: readonly number[], covered: readonly number[]): string;
  /**
   * The open generation as the probe function last answered this worker (null before its first claim): where
   * the one-trip path copies the keys, the enter function checking that it is still open.
   */
  openGeneration: { gen: number; part: string } | null;
}

interface ProbeRow {
  open_gen: number;
  open_part: string;
  stored_keys: number;
  uncovered: boolean;
}

const UNIQUE_VIOLATION = "23505";

/** PGCOPY signature, flags, header extension length (PostgreSQL's binary COPY format). */
const BINARY_HEADER = Buffer.from([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
/** Per row: field count, then length + 16 key bytes, then length + 4 generation bytes. */
const ROW_BYTES = 2 + 4 + 16 + 4 + 4;

/**
 * A batch's filter check, and whether its hits in the generations under the parent table were probed and none
 * is stored (`clear`): what the claim's fast path needs from before the transaction.
 */
export interface CheckedKeys {
  checked: FilterCheck;
  clear: boolean;
}

/** The pruned hits statement when fewer than 1 in PRUNED_HIT_SHARE of the sealed generations were hit. */
const PRUNED_HIT_SHARE = 3;

/**
 * Probes the hits of a filter check (IdFilters.check) in the generations under the parent table, before the
 * group commit's transaction begins (dedupHitsProbeSql says why there).
 */
export async function probeFilterHits(client: pg.ClientBase, sql: ClaimSql, checked: FilterCheck): Promise<CheckedKeys> {
  if (checked.covered === null || checked.maybe!.length === 0) return { checked, clear: true };
  const hit = [...new Set(checked.gens)];
  // The prepared form opens every partition (~16 µs each), the pruned one plans and opens those hit (~70 µs
  // each): measured on 52 generations, even at about a third of them hit (dedupHitsProbeSql).
  const { rows } =
    hit.length * PRUNED_HIT_SHARE < checked.covered.length
      ? await client.query<{ stored: number }>(sql.hits.pruned, [checked.maybe, checked.gens, hit])
      : await client.query<{ stored: number }>({ name: sql.hits.name, text: sql.hits.text, values: [checked.maybe, checked.gens] });
  return { checked, clear: rows[0].stored === 0 };
}

/**
 * Records the keys (src/shared/dedup-key.ts, one per row) in the open generation; returns the 1-based
 * positions of the rows whose id was NOT recorded (stored before, or a later copy within the batch). `pre`: the
 * check made before the transaction, of these keys or of more (a batch regrouped since only loses rows).
 * `opening`: statements not sent yet that must run first (the transaction's BEGIN), sent with the claim's first.
 */
export async function claimIds(
  client: pg.ClientBase,
  sql: ClaimSql,
  keys: readonly string[],
  pre: CheckedKeys,
  opening = "",
): Promise<number[]> {
  const { checked } = pre;
  if (checked.covered !== null && pre.clear) {
    // The hits already probed are left out: the probe function probes the adopted generations' alone.
    const adopted = adoptedHits(checked);
    const call = sql.probeCall(adopted.maybe, adopted.gens, checked.covered);
    const probe = await firstRowOfLast<ProbeRow>(client, opening === "" ? call : `${opening}; ${call}`);
    opening = "";
    // While a sealed generation has no filter here the enter function would refuse every one-trip claim.
    sql.openGeneration = probe.uncovered ? null : { gen: probe.open_gen, part: probe.open_part };
    if (!probe.uncovered && probe.stored_keys === 0) {
      try {
        // The savepoint, the COPY and its release in one round trip (copy-in.ts).
        await copyIn(client, `SAVEPOINT ingestd_claim; ${dedupKeysCopySql(probe.open_part)}; RELEASE SAVEPOINT ingestd_claim`, [
          keyRows(keys, probe.open_gen),
        ]);
        return [];
      } catch (err) {
        if ((err as pg.DatabaseError).code !== UNIQUE_VIOLATION) throw err;
        // Some id is stored already, or twice in the batch: claimed key by key below.
        await client.query("ROLLBACK TO SAVEPOINT ingestd_claim; RELEASE SAVEPOINT ingestd_claim");
      }
    }
  }
  if (opening !== "") await client.query(opening);
  const { rows } = await client.query<{ n: number }>(sql.claim, [keys, checked.maybe, checked.gens, checked.covered]);
  return rows.map((r) => r.n);
}

/**
 * The claim of `keys` on the one-trip path: the statements (the enter function's call, then the keys' binary
 * COPY into the open generation the probe function last named) and that COPY's data, to travel in one Query
 * between the transaction's BEGIN and the rows' COPY and COMMIT (workers/commit/group-commit.ts). If the
 * generation was sealed since, a sealed one has no filter here, or a key is stored or twice in the batch, a
 * statement fails, PostgreSQL skips the rest of the Query and nothing of it commits: the caller rolls back and
 * claims the long way (claimIds), which learns the new open generation. Null where that long way is known to be
 * needed: no generation learnt yet, no filters received, or a filter's hit found stored or not probed.
 * docs/performance.md#round-trips-of-a-group-commit.
 */
export function oneTripClaim(sql: ClaimSql, keys: readonly string[], pre: CheckedKeys): { statements: string[]; payload: Buffer } | null {
  const open = sql.openGeneration;
  const { checked } = pre;
  if (open === null || checked.covered === null || !pre.clear) return null;
  const adopted = adoptedHits(checked);
  return {
    statements: [sql.enterCall(open.gen, adopted.maybe, adopted.gens, checked.covered), dedupKeysCopySql(open.part)],
    payload: keyRows(keys, open.gen),
  };
}

/** The first row of the last statement's result (pg answers a Query of several statements with one result each). */
async function firstRowOfLast<R extends pg.QueryResultRow>(client: pg.ClientBase, text: string): Promise<R> {
  const result = (await client.query(text)) as unknown as pg.QueryResult<R> | Array<pg.QueryResult<R>>;
  return (Array.isArray(result) ? result[result.length - 1] : result).rows[0];
}

/** The hits in generations adopted from the time-slot shape (not under the parent table: dedupHitsProbeSql). */
function adoptedHits(checked: FilterCheck): { maybe: string[]; gens: number[] } {
  const maybe: string[] = [];
  const gens: number[] = [];
  for (let i = 0; i < checked.gens!.length; i++) {
    if (checked.gens![i] <= LAST_ADOPTED_GENERATION) {
      maybe.push(checked.maybe![i]);
      gens.push(checked.gens![i]);
    }
  }
  return { maybe, gens };
}

/** A sort entry holds a key's first 32 bits above its position's SORT_POSITION_BITS bits: exact in a double. */
const SORT_POSITION_BITS = 21;
const SORT_POSITIONS = 2 ** SORT_POSITION_BITS;

/**
 * The binary COPY data of the keys in key order: a transaction only ever waits for another's uncommitted id
 * while holding smaller ones itself, so two claims never wait for each other (the claim function inserts in
 * the same order). Canonical UUID strings sort as their bytes do. The order comes from a native sort of
 * numbers (first 32 bits, then position), ties on those bits settled by the strings; each key is then written
 * once, into its row. A sort of the strings cost ~160 ns a key (docs/performance.md#daemon-cpu-per-event).
 */
export function keyRows(keys: readonly string[], gen: number): Buffer {
  const n = keys.length;
  const order = keyOrder(keys);
  const buf = Buffer.allocUnsafe(BINARY_HEADER.length + n * ROW_BYTES + 2);
  BINARY_HEADER.copy(buf, 0);
  const g0 = (gen >>> 24) & 255;
  const g1 = (gen >>> 16) & 255;
  const g2 = (gen >>> 8) & 255;
  const g3 = gen & 255;
  let o = BINARY_HEADER.length;
  for (let j = 0; j < n; j++) {
    // 2 fields; 16 key bytes; 4 generation bytes (big-endian, as writeInt16BE / writeInt32BE would).
    buf[o] = 0;
    buf[o + 1] = 2;
    buf[o + 2] = 0;
    buf[o + 3] = 0;
    buf[o + 4] = 0;
    buf[o + 5] = 16;
    writeKeyBytes(keys[order[j]], buf, o + 6);
    buf[o + 22] = 0;
    buf[o + 23] = 0;
    buf[o + 24] = 0;
    buf[o + 25] = 4;
    buf[o + 26] = g0;
    buf[o + 27] = g1;
    buf[o + 28] = g2;
    buf[o + 29] = g3;
    o += ROW_BYTES;
  }
  buf.writeInt16BE(-1, o);
  return buf;
}

/** The positions of the keys in ascending order. */
function keyOrder(keys: readonly string[]): ArrayLike<number> {
  const n = keys.length;
  if (n >= SORT_POSITIONS) return Array.from({ length: n }, (_, i) => i).sort((a, b) => byKey(keys, a, b));
  const entries = new Float64Array(n);
  for (let i = 0; i < n; i++) entries[i] = keyPrefix(keys[i]) * SORT_POSITIONS + i;
  entries.sort();
  const order = new Uint32Array(n);
  for (let j = 0; j < n; j++) order[j] = entries[j] % SORT_POSITIONS;
  // Keys sharing their first 32 bits are in position order: each such run is sorted by the whole key.
  for (let j = 1; j < n; j++) {
    const prefix = Math.floor(entries[j] / SORT_POSITIONS);
    if (prefix !== Math.floor(entries[j - 1] / SORT_POSITIONS)) continue;
    let end = j + 1;
    while (end < n && Math.floor(entries[end] / SORT_POSITIONS) === prefix) end++;
    order.set(
      Array.from(order.subarray(j - 1, end)).sort((a, b) => byKey(keys, a, b)),
      j - 1,
    );
    j = end - 1;
  }
  return order;
}

function byKey(keys: readonly string[], a: number, b: number): number {
  return keys[a] < keys[b] ? -1 : keys[a] > keys[b] ? 1 : 0;
}

/**
 * The open generation's filters, filled while it fills (docs/storage.md#the-window-and-the-id-state).
 * From a generation's seal until its filter is published every claim probes it in PostgreSQL with all its keys
 * (about 10 µs a key under load, against 2 for the fast path); reading its ~420,000 keys only then made that
 * gap a second long, at every rotation. So each maintenance pass reads the keys the open generation took since
 * the last pass into its own filter and its group's next version, both private to this process, and its seal
 * leaves only the last pass's keys to read.
 *
 * Which keys a pass has read is told by transaction ids, never by position: a pass reads in a REPEATABLE READ
 * snapshot and notes that snapshot's oldest running transaction; the next read takes every row inserted by that
 * transaction or a later one (`age(xmin)` at most its age), a superset of the rows the snapshot could not see,
 * subtransactions' included (their ids come after their parent's). A row read twice is added once
 * (DedupFilter.addBytesOnce).
 */
import type pg from "pg";
import { DedupFilter } from "../shared/dedup-filter";
import { DEDUP_FILTER_IDENT as FILTER, type dedupShape } from "../shared/dedup-sql";
import { GROUP_GENERATIONS, type GroupFilterCache, keysAtMost, openGroup, readKeys, tryAdd } from "./dedup-filters";

type DedupShape = NonNullable<ReturnType<typeof dedupShape>>;

/**
 * The open generation's own filter's room for keys, over the last sealed generation's: generations are sealed by
 * index size, checked every pass, so one holds up to about a pass's keys more than another. A generation that
 * outgrows a filter fills it (DedupFilterFull) and is read whole at its seal, as without a prefill. The group it
 * joins must have room for the last generation's keys, as buildDedupFilters asks room for a generation's own.
 */
const ROOM_OVER_LAST = 1.5;

/** What a seal takes over: the generation's own filter, its group's next version, and the group it joins (null: it starts one). */
export interface PrefilledFilters {
  own: DedupFilter;
  group: DedupFilter;
  joins: { grp: number; gens: number[] } | null;
}

interface Prefill extends PrefilledFilters {
  gen: number;
  part: string;
  /** The oldest transaction running when the last read's snapshot was taken (a 32-bit xid); null before the first read. */
  readFrom: string | null;
  /** Given up (a filter filled): the seal reads the generation whole. */
  failed: boolean;
}

export class OpenGenerationFilters {
  /**
   * By `<slots table> g<gen>`: the open generation's, and the one sealed before it until its filters are built
   * (another daemon may have sealed it since this one's last read).
   */
  private readonly prefills = new Map<string, Prefill>();
  /** Seals that took a prefill over, for tests. */
  completed = 0;

  /**
   * Reads the keys the stream's open generation took since the last pass into its filters; starts them when
   * the generation is new (a copy of the open group's filter, or a new group's). Not inside a transaction.
   */
  async fill(client: pg.ClientBase, d: DedupShape, cache?: GroupFilterCache): Promise<void> {
    const { rows } = await client.query<{ gen: number; part: string }>(
      `SELECT gen, part FROM ${d.slots} WHERE opened_at IS NOT NULL AND sealed_at IS NULL`,
    );
    const open = rows[0];
    if (open === undefined) return;
    let p = this.prefills.get(`${d.slots} g${open.gen}`);
    if (p === undefined) {
      // Older ones were built by another daemon, or dropped: never completed here.
      for (const [key, old] of this.prefills) if (key.startsWith(`${d.slots} g`) && old.gen < open.gen - 1) this.prefills.delete(key);
      const started = await start(client, d, open, cache);
      if (started === null) return;
      p = started;
      this.prefills.set(`${d.slots} g${open.gen}`, p);
    }
    if (p.failed) return;
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    try {
      const snapshot = await client.query<{ oldest: string }>(
        "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296)::text AS oldest",
      );
      const oldest = snapshot.rows[0].oldest;
      if (!/^\d+$/.test(oldest)) throw new Error(`not a transaction id: ${oldest}`);
      const read = await readSince(client, p);
      await client.query("COMMIT");
      if (read) p.readFrom = oldest;
      else p.failed = true;
    } catch (err) {
      p.failed = true; // some of the read may be in the filters, not noted: the seal reads the generation whole
      await client.query("ROLLBACK").catch(() => undefined);
      throw err;
    }
  }

  /**
   * The filters of generation `gen`, sealed since the last pass, completed with the keys it took since; null when
   * none were filled for it, or the group its prefill joined has changed since (another daemon's build): the
   * caller reads it whole. Forgets the prefill either way.
   */
  async complete(client: pg.ClientBase, d: DedupShape, gen: number): Promise<PrefilledFilters | null> {
    const p = this.prefills.get(`${d.slots} g${gen}`);
    if (p === undefined) return null;
    this.prefills.delete(`${d.slots} g${gen}`);
    if (p.failed || p.readFrom === null) return null;
    if (p.joins !== null) {
      const { rows } = await client.query<{ grp: number; gens: number[] }>(`SELECT grp, gens FROM ${d.groups} ORDER BY grp DESC LIMIT 1`);
      if (rows[0]?.grp !== p.joins.grp || rows[0].gens.join() !== p.joins.gens.join()) return null;
    }
    if (!(await readSince(client, p))) return null;
    this.completed++;
    return { own: p.own, group: p.group, joins: p.joins };
  }
}

/**
 * A new prefill of the open generation, sized from the last sealed generation; failed (nothing to size from)
 * when there is none; null, to start at the next pass, while that one has no filter yet (which group the open
 * one would join is not known before).
 */
async function start(
  client: pg.ClientBase,
  d: DedupShape,
  open: { gen: number; part: string },
  cache?: GroupFilterCache,
): Promise<Prefill | null> {
  const given = { gen: open.gen, part: open.part, readFrom: null };
  const { rows } = await client.query<{ part: string; built: boolean }>(
    `SELECT part, ${FILTER} IS NOT NULL AS built FROM ${d.slots} WHERE sealed_at IS NOT NULL ORDER BY sealed_at DESC LIMIT 1`,
  );
  if (rows.length > 0 && !rows[0].built) return null;
  const last = rows.length > 0 ? await keysAtMost(client, [rows[0].part]) : 0;
  if (last === 0) return { ...given, own: new DedupFilter(1), group: new DedupFilter(1), joins: null, failed: true };
  const group = await openGroup(client, d, last, null, cache);
  return {
    ...given,
    own: new DedupFilter(Math.ceil(last * ROOM_OVER_LAST)),
    // A new group is sized as buildDedupFilters sizes one: for GROUP_GENERATIONS of its first generation.
    group: group?.filter ?? new DedupFilter(last * GROUP_GENERATIONS),
    joins: group === null ? null : { grp: group.grp, gens: group.gens },
    failed: false,
  };
}

/** Adds the rows of transactions from `p.readFrom` on (every row before the first read); false once a filter filled. */
async function readSince(client: pg.ClientBase, p: Prefill): Promise<boolean> {
  // An xid literal: COPY takes no parameters, and readFrom is digits PostgreSQL returned.
  const where = p.readFrom === null ? "" : ` WHERE age(xmin) <= age('${p.readFrom}'::xid)`;
  let full = false;
  await readKeys(
    client,
    p.part,
    (data, at) => {
      full = tryAdd(p.own, data, at, true) !== null || tryAdd(p.group, data, at, true) !== null;
      return !full;
    },
    where,
  );
  return !full;
}

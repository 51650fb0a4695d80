/**
 * The generations of the deduplicating streams' id state (docs/storage.md#deduplication). One generation is
 * open and takes every new id; one more waits ahead. The open one is sealed and the next opened (a rotation)
 * once its unique index reaches 16 MiB (dedupHotBytes) or it has been open an eighth of the window, so
 * random ids are always inserted into a small index that stays in memory. A sealed generation is dropped whole once
 * it was sealed more than the window ago: an id is remembered at least the window after it was first stored,
 * and forgetting it costs a DROP TABLE.
 */
import type pg from "pg";
import type { StreamDefinition } from "../shared/stream-definition";
import { dedupTable, qualifiedName, quoteIdent } from "../shared/sql-identifiers";
import {
  DEDUP_FILTER_COLUMN,
  DEDUP_FILTER_IDENT as FILTER,
  DEDUP_GEN_COLUMN,
  DEDUP_KEY_COLUMN,
  DEDUP_SEALED_COLUMN,
  DEDUP_SEALED_IDENT as SEALED,
  dedupGenerationName,
  LAST_ADOPTED_GENERATION,
  dedupLegacyGroupsTables,
  dedupShape,
} from "../shared/dedup-sql";
import { dedupKeySql } from "../shared/dedup-key";
import { locked } from "./partitions";
import { buildDedupFilters, buildDedupGroupFilters, type GroupFilterCache } from "./dedup-filters";
import type { OpenGenerationFilters } from "./open-generation-filters";
import { sealDedupGroups } from "./sealed-groups";

/** Sealing after an eighth of the window at the latest keeps a generation's ids from outliving it by more. */
export const GENERATIONS_PER_WINDOW = 8;

/** How long a rotation waits for the claims in flight before trying again at the next check. */
const ROTATION_LOCK_TIMEOUT = "2s";

export function dedupMaxOpenSeconds(windowHours: number): number {
  return Math.floor((windowHours * 3600) / GENERATIONS_PER_WINDOW);
}

/**
 * The size of the open generation's index that triggers a rotation: 16 MiB (about 420,000 random ids), or
 * half of shared_buffers when that is less (at least 4 MiB). Measured on the project's 2-core machine (binary
 * COPY of 5,000 random keys per statement, docs/storage.md#deduplication): PostgreSQL spends 0.8 µs per id
 * on the heap and 2.0 µs on the unique index while it is under 8 MiB, 2.6 µs up to 16 MiB, 3.4–3.7 µs from
 * 32 MiB on; past its share of shared_buffers an index also starts to miss the buffer cache. A smaller
 * generation costs one more partition and filter share per id remembered, so not smaller still.
 */
export const DEDUP_HOT_INDEX_BYTES = 16 << 20;

export async function dedupHotBytes(client: pg.ClientBase): Promise<number> {
  const { rows } = await client.query<{ bytes: string }>(
    `SELECT (setting::bigint * 8192) AS bytes FROM pg_settings WHERE name = 'shared_buffers'`,
  );
  return Math.max(4 << 20, Math.min(DEDUP_HOT_INDEX_BYTES, Math.floor(Number(rows[0].bytes) / 2)));
}

/** DDL of the id state (the generations themselves come from createGeneration). */
export function dedupStateDdl(schema: string, stream: StreamDefinition): string[] {
  const d = dedupShape(schema, stream)!;
  return [
    `CREATE TABLE IF NOT EXISTS ${d.ids} (${quoteIdent(DEDUP_KEY_COLUMN)} uuid NOT NULL, ${quoteIdent(DEDUP_GEN_COLUMN)} integer NOT NULL)
  PARTITION BY LIST (${quoteIdent(DEDUP_GEN_COLUMN)})`,
    `CREATE TABLE IF NOT EXISTS ${d.slots} (gen integer PRIMARY KEY, part text NOT NULL, opened_at timestamptz, sealed_at timestamptz)`,
    // A slots table of an earlier format gets the column of format 3 beside its own (docs/storage.md#filter-format).
    // Only when missing: ADD COLUMN IF NOT EXISTS takes the table's ACCESS EXCLUSIVE lock even when the column is
    // there, and a daemon starting beside others under load deadlocked on it with their claims (which read the
    // slots table while their COPY waited for the lock this transaction took on the events table).
    `DO $column$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '${d.slots.replace(/'/g, "''")}'::regclass AND attname = '${DEDUP_FILTER_COLUMN}' AND NOT attisdropped) THEN
    ALTER TABLE ${d.slots} ADD COLUMN ${FILTER} bytea;
  END IF;
END $column$`,
    `CREATE TABLE IF NOT EXISTS ${d.groups} (grp integer PRIMARY KEY, gens integer[] NOT NULL, ${FILTER} bytea NOT NULL)`,
    // A closed group's sealed filter (docs/storage.md#sealed-group-filters); only when missing, as above.
    `DO $column$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '${d.groups.replace(/'/g, "''")}'::regclass AND attname = '${DEDUP_SEALED_COLUMN}' AND NOT attisdropped) THEN
    ALTER TABLE ${d.groups} ADD COLUMN ${SEALED} bytea;
    ALTER TABLE ${d.groups} ALTER COLUMN ${SEALED} SET STORAGE EXTERNAL;
  END IF;
END $column$`,
    // Random bits do not compress; stored plainly, a slice of a filter is read without the rest. Only when not
    // yet so: the ALTER would wait for, and then hold up, the claims reading the slots table.
    ...[d.slots, d.groups].map(
      (t) => `DO $storage$ BEGIN
  IF (SELECT attstorage FROM pg_attribute WHERE attrelid = '${t.replace(/'/g, "''")}'::regclass AND attname = '${DEDUP_FILTER_COLUMN}') <> 'e' THEN
    ALTER TABLE ${t} ALTER COLUMN ${FILTER} SET STORAGE EXTERNAL;
  END IF;
END $storage$`,
    ),
  ];
}

export interface GenerationTimes {
  /** null: ahead (not open yet). */
  openedAt: Date | null;
  /** null: not sealed. */
  sealedAt: Date | null;
}

/** Creates the partition of a new generation (the next number) with its unique index, and its slots row. */
export async function createGeneration(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  times: GenerationTimes,
): Promise<{ gen: number; part: string; name: string }> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ gen: number }>(`SELECT greatest(max(gen), ${LAST_ADOPTED_GENERATION}) + 1 AS gen FROM ${d.slots}`);
  const gen = rows[0].gen;
  const name = dedupGenerationName(stream.table, gen);
  const part = qualifiedName(schema, name);
  // Written once and dropped whole: no row of it ever dies, and autovacuum would only scan it again and again
  // while it fills (and with data checksums write its pages to the WAL once more). PostgreSQL still forces the anti-wraparound
  // vacuum should a generation outlive autovacuum_freeze_max_age transactions.
  await client.query(`CREATE TABLE ${part} PARTITION OF ${d.ids} FOR VALUES IN (${gen}) WITH (autovacuum_enabled = false)`);
  // The key alone is unique within a generation; the parent cannot hold such an index (it lacks gen).
  await client.query(`CREATE UNIQUE INDEX ${quoteIdent(`${name}_key`)} ON ${part} (${quoteIdent(DEDUP_KEY_COLUMN)})`);
  await client.query(`INSERT INTO ${d.slots} (gen, part, opened_at, sealed_at) VALUES ($1, $2, $3, $4)`, [
    gen,
    part,
    times.openedAt?.toISOString() ?? null,
    times.sealedAt?.toISOString() ?? null,
  ]);
  return { gen, part, name };
}

/** Makes sure one generation is open and one waits ahead (at start and after a rotation). Returns those created. */
export async function ensureDedupGenerations(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const created: string[] = [];
  const { rows } = await client.query<{ open: number; ahead: number }>(
    `SELECT count(*) FILTER (WHERE opened_at IS NOT NULL AND sealed_at IS NULL)::int AS open,
            count(*) FILTER (WHERE opened_at IS NULL)::int AS ahead FROM ${d.slots}`,
  );
  let ahead = rows[0].ahead;
  if (rows[0].open === 0) {
    if (ahead > 0) {
      await client.query(`UPDATE ${d.slots} SET opened_at = $1 WHERE gen = (SELECT min(gen) FROM ${d.slots} WHERE opened_at IS NULL)`, [
        at.toISOString(),
      ]);
      ahead--;
    } else {
      created.push((await createGeneration(client, schema, stream, { openedAt: at, sealedAt: null })).name);
    }
  }
  if (ahead === 0) created.push((await createGeneration(client, schema, stream, { openedAt: null, sealedAt: null })).name);
  return created;
}

/**
 * Seals the open generation and opens the one ahead when the open one's index reached `hotBytes` or it has
 * been open longer than an eighth of the window. The rotation takes the stream's rotation lock exclusively,
 * so it waits for every claim in flight (each holds it shared until it commits): afterwards nothing more is
 * ever written to the sealed generation, and its filter can be built at once. Returns the sealed partition,
 * or null (no rotation due, or the claims in flight outlasted the lock timeout: the next check tries again).
 */
export async function rotateDedupGeneration(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  windowHours: number,
  hotBytes: number,
  at = new Date(),
): Promise<string | null> {
  const d = dedupShape(schema, stream)!;
  const { rows } = await client.query<{ gen: number; part: string; opened_at: Date; bytes: string }>(
    `SELECT gen, part, opened_at, (SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_index i WHERE i.indrelid = part::regclass) AS bytes
       FROM ${d.slots} WHERE opened_at IS NOT NULL AND sealed_at IS NULL`,
  );
  if (rows.length === 0) return null;
  const open = rows[0];
  const due = Number(open.bytes) >= hotBytes || at.getTime() - open.opened_at.getTime() >= dedupMaxOpenSeconds(windowHours) * 1000;
  if (!due) return null;
  await locked(client, () => ensureDedupGenerations(client, schema, stream, at));
  await client.query("BEGIN");
  try {
    await client.query(`SET LOCAL lock_timeout = '${ROTATION_LOCK_TIMEOUT}'`);
    await client.query(`SELECT pg_advisory_xact_lock(${d.lockArgs})`);
    const sealed = await client.query(`UPDATE ${d.slots} SET sealed_at = clock_timestamp() WHERE gen = $1 AND sealed_at IS NULL`, [
      open.gen,
    ]);
    if (sealed.rowCount === 0) {
      await client.query("ROLLBACK"); // another daemon rotated it
      return null;
    }
    await client.query(
      `UPDATE ${d.slots} SET opened_at = clock_timestamp() WHERE gen = (SELECT min(gen) FROM ${d.slots} WHERE opened_at IS NULL)`,
    );
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    if ((err as { code?: string }).code === "55P03") return null; // lock_not_available: claims in flight outlasted the timeout
    throw err;
  }
  await locked(client, () => ensureDedupGenerations(client, schema, stream, at));
  return open.part;
}

/** Drops the generations sealed more than the window before `at` (never the open one). */
export async function dropExpiredDedupGenerations(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  windowHours: number,
  at = new Date(),
): Promise<string[]> {
  const d = dedupShape(schema, stream)!;
  const cutoff = new Date(at.getTime() - windowHours * 3600_000);
  const { rows } = await client.query<{ gen: number; part: string }>(
    `SELECT gen, part FROM ${d.slots} WHERE sealed_at <= $1 ORDER BY gen`,
    [cutoff.toISOString()],
  );
  for (const r of rows) {
    await client.query(`DROP TABLE IF EXISTS ${r.part}`);
    await client.query(`DELETE FROM ${d.slots} WHERE gen = $1`, [r.gen]);
  }
  // A group filter stays valid for what is left of its generations; it goes with the last of them.
  await client.query(`DELETE FROM ${d.groups} g WHERE NOT EXISTS (SELECT 1 FROM ${d.slots} s WHERE s.gen = ANY(g.gens))`);
  await dropLegacyGroups(client, schema, stream);
  await dropEmptyLegacyParent(client, schema, stream);
  return rows.map((r) => r.part);
}

/**
 * An id table of the first shape (`<table>_dedup` with the id as primary key, unpartitioned) or of the
 * time-slot shape (`<table>_dedup` range-partitioned on `stored_at`, its slots table keyed by `lower`) is
 * renamed out of the way before the current shape is created; migrateLegacyIdState then takes its ids over.
 * Returns which shape there was.
 */
export async function renameLegacyIdState(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
): Promise<"table" | "slots" | null> {
  const ids = dedupTable(stream.table);
  const { rows } = await client.query<{ kind: string; slots_by_time: boolean }>(
    `SELECT c.relkind AS kind,
            EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class s ON s.oid = a.attrelid
                     WHERE s.relnamespace = n.oid AND s.relname = $3 AND a.attname = 'lower' AND NOT a.attisdropped) AS slots_by_time
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, ids, `${ids}_slots`],
  );
  if (rows.length === 0) return null;
  if (rows[0].kind === "r") {
    await client.query(`ALTER TABLE ${qualifiedName(schema, ids)} RENAME TO ${quoteIdent(`${ids}_legacy`)}`);
    return "table";
  }
  if (!rows[0].slots_by_time) return null;
  await client.query(`ALTER TABLE ${qualifiedName(schema, ids)} RENAME TO ${quoteIdent(`${ids}_legacy`)}`);
  await client.query(`ALTER TABLE ${qualifiedName(schema, `${ids}_slots`)} RENAME TO ${quoteIdent(`${ids}_slots_legacy`)}`);
  return "slots";
}

/**
 * Takes over the ids of a renamed legacy id state, once, at the start that finds it. The first shape's ids
 * are copied into the open generation as if first stored now (each remembered at least a window from now,
 * never less than before), and its table dropped. The time-slot shape's partitions are kept as they are and
 * listed as sealed generations (sealed at their slot's end, or now for the slot in progress), with their
 * filters: no id is copied, and each goes with the window like any generation. Their old parent is dropped
 * once it has no partition left.
 */
export async function migrateLegacyIdState(
  client: pg.ClientBase,
  schema: string,
  stream: StreamDefinition,
  shape: "table" | "slots",
  at = new Date(),
): Promise<number> {
  const d = dedupShape(schema, stream)!;
  const legacy = qualifiedName(schema, `${dedupTable(stream.table)}_legacy`);
  if (shape === "table") {
    const { rows } = await client.query<{ part: string; gen: number }>(
      `SELECT part, gen FROM ${d.slots} WHERE opened_at IS NOT NULL AND sealed_at IS NULL`,
    );
    const id = quoteIdent(stream.dedupKey!);
    const moved = await client.query(
      `INSERT INTO ${rows[0].part} (${quoteIdent(DEDUP_KEY_COLUMN)}, ${quoteIdent(DEDUP_GEN_COLUMN)})
       SELECT DISTINCT ${dedupKeySql(`${id}::text`)}, $1::integer FROM ${legacy} ORDER BY 1
       ON CONFLICT DO NOTHING`,
      [rows[0].gen],
    );
    await client.query(`DROP TABLE ${legacy}`);
    return moved.rowCount ?? 0;
  }
  const oldSlots = qualifiedName(schema, `${dedupTable(stream.table)}_slots_legacy`);
  const { rows: old } = await client.query<{ part: string; lower: Date; upper: Date }>(
    `SELECT part, lower, upper FROM ${oldSlots} ORDER BY lower DESC`,
  );
  let adopted = 0;
  for (const slot of old) {
    if (slot.lower.getTime() > at.getTime()) {
      await client.query(`DROP TABLE IF EXISTS ${slot.part}`); // a slot ahead: empty
      continue;
    }
    const sealedAt = new Date(Math.min(slot.upper.getTime(), at.getTime()));
    // Numbered below the current generations, newest first (0, -1, …: LAST_ADOPTED_GENERATION and down). Its filter is of an earlier format:
    // left to be built again.
    await client.query(
      `INSERT INTO ${d.slots} (gen, part, opened_at, sealed_at)
       VALUES ((SELECT least(min(gen) - 1, ${LAST_ADOPTED_GENERATION}) FROM ${d.slots}), $1, $2, $3)`,
      [slot.part, slot.lower.toISOString(), sealedAt.toISOString()],
    );
    adopted++;
  }
  await client.query(`DROP TABLE ${oldSlots}`);
  await dropEmptyLegacyParent(client, schema, stream);
  return adopted;
}

/**
 * Earlier formats' group filters (dedupLegacyGroupsTables): a daemon of such a format still running beside this
 * one keeps using them; each goes with the last of its generations, and its table once empty.
 */
async function dropLegacyGroups(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<void> {
  const slots = dedupShape(schema, stream)!.slots;
  for (const table of dedupLegacyGroupsTables(stream.table)) {
    const legacy = qualifiedName(schema, table);
    const { rows } = await client.query<{ found: string | null }>(`SELECT to_regclass($1)::text AS found`, [legacy]);
    if (rows[0].found === null) continue;
    await client.query(`DELETE FROM ${legacy} g WHERE NOT EXISTS (SELECT 1 FROM ${slots} s WHERE s.gen = ANY(g.gens))`);
    await client.query(`DO $legacy$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM ${legacy}) THEN DROP TABLE ${legacy}; END IF;
END $legacy$`);
  }
}

/** Drops a time-slot shape's old parent once its last adopted partition went with the window. */
async function dropEmptyLegacyParent(client: pg.ClientBase, schema: string, stream: StreamDefinition): Promise<void> {
  const { rows } = await client.query<{ parts: number }>(
    `SELECT (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)::int AS parts
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'p'`,
    [schema, `${dedupTable(stream.table)}_legacy`],
  );
  if (rows.length === 1 && rows[0].parts === 0)
    await client.query(`DROP TABLE ${qualifiedName(schema, `${dedupTable(stream.table)}_legacy`)}`);
}

/** What a maintenance pass did to the id state: partitions created, sealed, dropped, filters built. */
export interface DedupPass {
  created: string[];
  sealed: string[];
  dropped: string[];
  filtered: string[];
  /** Streams whose open generation's fill failed (`stream: message`): their next seal reads it whole. */
  unfilled: string[];
}

/**
 * One maintenance pass over every deduplicating stream's id state: maintainDedupGenerations, then
 * buildDedupGroups.
 */
export async function maintainDedupState(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  windowHours: number,
  at = new Date(),
  hotBytes?: number,
  cache?: GroupFilterCache,
  prefills?: OpenGenerationFilters,
): Promise<DedupPass> {
  const done = await maintainDedupGenerations(client, schema, streams, windowHours, at, hotBytes, cache, prefills);
  done.filtered.push(...(await buildDedupGroups(client, schema, streams, cache)));
  return done;
}

/**
 * The quick part of a pass: the keys the open generation took since the last pass into the filters filled
 * while it is open, the rotation when due, the generations ahead, the ones past the window dropped (under the
 * schema lock), and the filters of the sealed ones with their groups' (one generation's keys each, seconds at
 * most; only the last moments' keys for a generation filled while open). `cache`: the group filters this
 * process holds (buildDedupFilters); `prefills`: the open generations' filters this process fills
 * (src/storage/open-generation-filters.ts).
 */
export async function maintainDedupGenerations(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  windowHours: number,
  at = new Date(),
  hotBytes?: number,
  cache?: GroupFilterCache,
  prefills?: OpenGenerationFilters,
): Promise<DedupPass> {
  const created: string[] = [];
  const sealed: string[] = [];
  const dropped: string[] = [];
  const filtered: string[] = [];
  const unfilled: string[] = [];
  const hot = hotBytes ?? (await dedupHotBytes(client));
  for (const stream of streams.filter((s) => s.dedupKey !== undefined)) {
    // Read just before a rotation, the open generation leaves its seal only the keys of the moments between. A
    // failed fill only costs its seal a whole read: it never keeps the rotation from running.
    await prefills?.fill(client, dedupShape(schema, stream)!, cache).catch((err: Error) => unfilled.push(`${stream.name}: ${err.message}`));
    const rotated = await rotateDedupGeneration(client, schema, stream, windowHours, hot, at);
    if (rotated !== null) sealed.push(rotated);
    await locked(client, async () => {
      created.push(...(await ensureDedupGenerations(client, schema, stream, at)));
      dropped.push(...(await dropExpiredDedupGenerations(client, schema, stream, windowHours, at)));
    });
    filtered.push(...(await buildDedupFilters(client, schema, stream, cache, prefills)));
  }
  return { created, sealed, dropped, filtered, unfilled };
}

/**
 * The long part: group filters for runs of GROUP_GENERATIONS filtered generations in no group (an earlier
 * release built groups only so; ten generations' keys streamed each), then the sealed filter of a closed group
 * (src/storage/sealed-groups.ts) that `cache`, the group filters this process holds, has outgrown (folded or
 * left out; the sealed filter is handed to it rather than read back); labels of the groups built or sealed.
 */
export async function buildDedupGroups(
  client: pg.ClientBase,
  schema: string,
  streams: readonly StreamDefinition[],
  cache?: GroupFilterCache,
): Promise<string[]> {
  const built: string[] = [];
  for (const stream of streams.filter((s) => s.dedupKey !== undefined)) {
    built.push(...(await buildDedupGroupFilters(client, schema, stream)));
    if (cache !== undefined) built.push(...(await sealDedupGroups(client, schema, stream, cache)));
  }
  return built;
}

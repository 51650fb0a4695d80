/**
 * `GET /v1/streams/{stream}/records` in SQL (docs/http-api.md#reading-back): keyset pagination on the
 * stream's time column and a unique tiebreak, filters on indexed columns only. Names come from the stream
 * definition, values only as bound parameters.
 *
 * The tiebreak: the primary key where the table has one (it survives updates, so upserted rows keep their
 * place); otherwise the row's physical address (tableoid, ctid), which is unique and never changes for rows
 * that are only ever inserted, as event rows are. Rows inserted while a client pages land in pages not yet
 * read or in ones already read, never twice and never shifting the others.
 */
import type { ColumnType, StreamDefinition } from "../shared/stream-definition";
import { filterableColumns, readTimeColumn } from "../shared/read-columns";
import { qualifiedName, quoteIdent } from "../shared/sql-identifiers";
import { encodeCursor, filterValue, PAGING_PARAMS, pagingOf, ReadQueryError, type Paging } from "./read-query";
import type { ReadPool } from "./read-pool";

/** What a read answers: records as JSON texts (no parse and re-serialise on the front thread). */
export interface ReadPage {
  /** Each record a JSON object text: the stream's columns and `ingested_at`. */
  records: string[];
  nextCursor: string | null;
}

interface Tiebreak {
  /** SQL expressions after the time column in the sort key. */
  exprs: string[];
  /** The type each cursor value is cast back to. */
  types: string[];
}

function tiebreakOf(stream: StreamDefinition): Tiebreak {
  if (stream.primaryKey && stream.primaryKey.length > 0) {
    const types = stream.primaryKey.map((name) => stream.columns.find((c) => c.name === name)!.type);
    return { exprs: stream.primaryKey.map(quoteIdent), types };
  }
  return { exprs: ["tableoid", "ctid"], types: ["oid", "tid"] };
}

/** The paging and filters of a records read, or ReadQueryError naming the parameter. */
export function recordQuery(
  stream: StreamDefinition,
  params: Map<string, string>,
): { paging: Paging; filters: [string, ColumnType, string][] } {
  const allowed = filterableColumns(stream);
  const filters: [string, ColumnType, string][] = [];
  for (const [name, value] of params) {
    if ((PAGING_PARAMS as readonly string[]).includes(name)) continue;
    if (!allowed.includes(name)) {
      const what = stream.columns.some((c) => c.name === name) ? "not an indexed column" : "not a column";
      throw new ReadQueryError(
        name,
        `${name}: ${what} of stream ${stream.name}; filter on ${allowed.length > 0 ? allowed.join(", ") : "(none)"} or page with ${PAGING_PARAMS.join(", ")}`,
      );
    }
    const type = stream.columns.find((c) => c.name === name)!.type;
    filters.push([name, type, filterValue(name, type, value)]);
  }
  return { paging: pagingOf(params, 1 + tiebreakOf(stream).exprs.length), filters };
}

/** One page of a stream's records. */
export async function readRecords(
  pool: ReadPool,
  schema: string,
  stream: StreamDefinition,
  paging: Paging,
  filters: readonly [string, ColumnType, string][],
): Promise<ReadPage> {
  const time = quoteIdent(readTimeColumn(stream));
  const tiebreak = tiebreakOf(stream);
  const values: unknown[] = [];
  const param = (value: unknown, type: string) => {
    values.push(value);
    return `$${values.length}::${type}`;
  };
  const where: string[] = [];
  for (const [column, type, value] of filters) where.push(`${quoteIdent(column)} = ${param(value, type)}`);
  if (paging.since !== null) where.push(`${time} >= ${param(paging.since, "timestamptz")}`);
  if (paging.until !== null) where.push(`${time} < ${param(paging.until, "timestamptz")}`);
  const sortKey = [time, ...tiebreak.exprs];
  if (paging.after !== null) {
    const types = [
      readTimeColumn(stream) === "ingested_at" ? "timestamptz" : columnType(stream, readTimeColumn(stream)),
      ...tiebreak.types,
    ];
    const bounds = paging.after.map((v, i) => param(v, types[i]));
    where.push(`(${sortKey.join(", ")}) ${paging.order === "asc" ? ">" : "<"} (${bounds.join(", ")})`);
  }
  const fields = [...stream.columns.map((c) => c.name), "ingested_at"].map((name) => `'${name}', ${quoteIdent(name)}`);
  const direction = paging.order === "asc" ? "ASC" : "DESC";
  const text =
    `SELECT json_build_object(${fields.join(", ")})::text AS record, ` +
    `ARRAY[${sortKey.map((e) => `${e}::text`).join(", ")}] AS sort_key ` +
    `FROM ${qualifiedName(schema, stream.table)}` +
    (where.length > 0 ? ` WHERE ${where.join(" AND ")}` : "") +
    ` ORDER BY ${sortKey.map((e) => `${e} ${direction}`).join(", ")} LIMIT ${paging.limit + 1}`;
  const { rows } = await pool.query<{ record: string; sort_key: string[] }>(text, values);
  const more = rows.length > paging.limit;
  const page = more ? rows.slice(0, paging.limit) : rows;
  return {
    records: page.map((r) => r.record),
    nextCursor: more ? encodeCursor(paging.order, page[page.length - 1].sort_key) : null,
  };
}

function columnType(stream: StreamDefinition, name: string): ColumnType {
  return stream.columns.find((c) => c.name === name)!.type;
}

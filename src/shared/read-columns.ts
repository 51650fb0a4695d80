/**
 * Which columns reading back orders and filters on (docs/http-api.md#reading-back): shared by the SQL
 * (src/storage/record-reads.ts) and the OpenAPI document, so both name the same ones.
 */
import type { StreamDefinition } from "./stream-definition";

/** The column reads are ordered and ranged on: the event time, else the time the row was stored. */
export function readTimeColumn(stream: StreamDefinition): string {
  return stream.timeColumn ?? "ingested_at";
}

/** Columns a read may filter on: those of the stream's indexes and primary key, in definition order. */
export function filterableColumns(stream: StreamDefinition): string[] {
  const indexed = new Set([...stream.indexes.flat(), ...(stream.primaryKey ?? [])]);
  return stream.columns.filter((c) => indexed.has(c.name)).map((c) => c.name);
}

/** Seed 002's read routes: where its clients look for its reference data (docs/http-api.md#reading-back). */
export const READ_ALIASES: ReadonlyArray<{ path: string; stream: string }> = [
  { path: "/users", stream: "users" },
  { path: "/countries", stream: "countries" },
];

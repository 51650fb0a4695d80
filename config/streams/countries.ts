import typia, { type tags } from "typia";
import { defineStream } from "../../src/shared/stream-definition";

/**
 * A country as public GraphQL APIs of countries serve it (seed 002; docs/streams.md#countries). Reference
 * data: a changed country replaces the stored row, an unchanged one is a duplicate.
 */
export interface CountryRecord {
  /** ISO 3166-1 alpha-2. */
  code: string & tags.Pattern<"^[A-Z]{2}$">;
  name: string & tags.MinLength<1> & tags.MaxLength<200>;
  capital?: (string & tags.MaxLength<200>) | null;
  /** One code or several, comma-separated (`USD,USN,USS`), as the APIs give them. */
  currency?: (string & tags.MaxLength<200>) | null;
  /** The continent's name or code (a pull source maps `continent.name` onto it). */
  continent?: (string & tags.MaxLength<100>) | null;
}

export default defineStream<CountryRecord>({
  name: "countries",
  table: "countries",
  description: "Countries (seed 002), upserted by code",
  formats: ["json", "ndjson"],
  validate: typia.createValidateEquals<CountryRecord>(),
  validateIgnoringUnknown: typia.misc.createValidatePrune<CountryRecord>(),
  schema: typia.json.schemas<[CountryRecord], "3.1">(),
  columns: [
    { name: "code", type: "text", value: (r) => r.code },
    { name: "name", type: "text", value: (r) => r.name },
    { name: "capital", type: "text", nullable: true, value: (r) => r.capital },
    { name: "currency", type: "text", nullable: true, value: (r) => r.currency },
    { name: "continent", type: "text", nullable: true, value: (r) => r.continent },
  ],
  indexes: [["continent"]],
  partitioned: false,
  primaryKey: ["code"],
  onConflict: "update",
});

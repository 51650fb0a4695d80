import typia, { type tags } from "typia";
import { defineStream } from "../../src/shared/stream-definition";

/**
 * A user as common public REST demo APIs serve `/users` (seed 002; docs/streams.md#users). Reference data:
 * a changed user replaces the stored row, an unchanged one is a duplicate.
 */
export interface UserRecord {
  id: number & tags.Type<"int32"> & tags.Minimum<1>;
  name: string & tags.MinLength<1> & tags.MaxLength<200>;
  username: string & tags.MinLength<1> & tags.MaxLength<100>;
  email: string & tags.Format<"email">;
  /** `{street, suite, city, zipcode, geo: {lat, lng}}` in the demo APIs; stored as sent. */
  address?: Record<string, unknown>;
  phone?: string & tags.MaxLength<100>;
  website?: string & tags.MaxLength<500>;
  /** `{name, catchPhrase, bs}` in the demo APIs; stored as sent. */
  company?: Record<string, unknown>;
}

export default defineStream<UserRecord>({
  name: "users",
  table: "users",
  description: "Users (seed 002), upserted by id",
  formats: ["json", "ndjson"],
  validate: typia.createValidateEquals<UserRecord>(),
  validateIgnoringUnknown: typia.misc.createValidatePrune<UserRecord>(),
  schema: typia.json.schemas<[UserRecord], "3.1">(),
  columns: [
    { name: "id", type: "integer", value: (r) => r.id },
    { name: "name", type: "text", value: (r) => r.name },
    { name: "username", type: "text", value: (r) => r.username },
    { name: "email", type: "text", value: (r) => r.email },
    { name: "address", type: "jsonb", nullable: true, value: (r) => r.address },
    { name: "phone", type: "text", nullable: true, value: (r) => r.phone },
    { name: "website", type: "text", nullable: true, value: (r) => r.website },
    { name: "company", type: "jsonb", nullable: true, value: (r) => r.company },
  ],
  indexes: [],
  partitioned: false,
  primaryKey: ["id"],
  onConflict: "update",
});

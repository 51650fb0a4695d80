import typia, { type tags } from "typia";
import { defineStream } from "../../src/shared/stream-definition";

/** A product-analytics event (docs/streams.md#product_events), the body of POST /events. */
export interface ProductEventRecord {
  event_id: string & tags.Format<"uuid">;
  user_id: string & tags.MinLength<1> & tags.MaxLength<128>;
  event_type: string & tags.MinLength<1> & tags.MaxLength<100>;
  /** Milliseconds since the Unix epoch. */
  event_time: number & tags.Type<"int64"> & tags.Minimum<0> & tags.Maximum<253402300799999>;
  experiment_id?: string & tags.MinLength<1> & tags.MaxLength<128>;
  variant?: string & tags.MinLength<1> & tags.MaxLength<128>;
  properties: Record<string, unknown>;
}

export default defineStream<ProductEventRecord>({
  name: "product_events",
  table: "product_events",
  description: "Product analytics events and experiment exposures",
  formats: ["json", "ndjson"],
  validate: typia.createValidateEquals<ProductEventRecord>(),
  schema: typia.json.schemas<[ProductEventRecord], "3.1">(),
  columns: [
    { name: "event_id", type: "uuid", value: (r) => r.event_id },
    { name: "user_id", type: "text", value: (r) => r.user_id },
    { name: "event_type", type: "text", value: (r) => r.event_type },
    { name: "event_time", type: "timestamptz", value: (r) => r.event_time },
    { name: "experiment_id", type: "text", nullable: true, value: (r) => r.experiment_id },
    { name: "variant", type: "text", nullable: true, value: (r) => r.variant },
    { name: "properties", type: "jsonb", value: (r) => r.properties },
  ],
  timeColumn: "event_time",
  indexes: [
    ["user_id", "event_time"],
    ["event_type", "event_time"],
  ],
  partitioned: true,
  dedupKey: "event_id",
  dedupByDefault: true,
});

import typia, { type tags } from "typia";
import { defineStream } from "../../src/shared/stream-definition";

/** A generic application event (docs/streams.md#events). */
export interface EventRecord {
  event_id: string & tags.MinLength<1> & tags.MaxLength<128>;
  service_name: string & tags.MinLength<1> & tags.MaxLength<50>;
  event_type: string & tags.MinLength<1> & tags.MaxLength<100>;
  payload: Record<string, unknown>;
  /** ISO-8601; defaults to the time the request was received. */
  timestamp?: string & tags.Format<"date-time">;
  metadata?: Record<string, unknown>;
}

export default defineStream<EventRecord>({
  name: "events",
  table: "events",
  description: "Application events from services and SDKs",
  formats: ["json", "ndjson"],
  validate: typia.createValidateEquals<EventRecord>(),
  validateIgnoringUnknown: typia.misc.createValidatePrune<EventRecord>(),
  schema: typia.json.schemas<[EventRecord], "3.1">(),
  columns: [
    { name: "event_id", type: "text", value: (r) => r.event_id },
    { name: "service_name", type: "text", value: (r) => r.service_name },
    { name: "event_type", type: "text", value: (r) => r.event_type },
    { name: "event_time", type: "timestamptz", value: (r, ctx) => r.timestamp ?? ctx.receivedAt },
    { name: "payload", type: "jsonb", value: (r) => r.payload },
    { name: "metadata", type: "jsonb", nullable: true, value: (r) => r.metadata },
  ],
  timeColumn: "event_time",
  indexes: [["service_name", "event_type", "event_time"]],
  partitioned: true,
  dedupKey: "event_id",
  dedupByDefault: true,
});

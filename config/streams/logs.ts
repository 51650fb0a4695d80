import typia, { type tags } from "typia";
import { defineStream } from "../../src/shared/stream-definition";

/** A log line from a service (docs/streams.md#logs). */
export interface LogRecord {
  service_name: string & tags.MinLength<1> & tags.MaxLength<50>;
  severity: "INFO" | "WARN" | "ERROR" | "DEBUG" | "CRITICAL";
  message: string & tags.MinLength<1>;
  payload?: Record<string, unknown>;
}

export default defineStream<LogRecord>({
  name: "logs",
  table: "logs",
  description: "Service logs",
  formats: ["json", "ndjson"],
  validate: typia.createValidateEquals<LogRecord>(),
  validateIgnoringUnknown: typia.misc.createValidatePrune<LogRecord>(),
  schema: typia.json.schemas<[LogRecord], "3.1">(),
  columns: [
    { name: "service_name", type: "text", value: (r) => r.service_name },
    { name: "severity", type: "text", value: (r) => r.severity },
    { name: "message", type: "text", value: (r) => r.message },
    { name: "payload", type: "jsonb", nullable: true, value: (r) => r.payload },
    // Log records carry no time of their own: they are filed under their receive time.
    { name: "logged_at", type: "timestamptz", value: (_r, ctx) => ctx.receivedAt },
  ],
  timeColumn: "logged_at",
  indexes: [["service_name", "severity", "logged_at"]],
  partitioned: true,
});

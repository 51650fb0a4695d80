/**
 * The worker's table of streams, built once at thread start from config/streams: each stream's definition
 * (with its typia validator and line parser), its compiled row encoder, and for a deduplicating stream the
 * extractors of a row's id and event time.
 */
import { dedupShape } from "../../src/shared/dedup-sql";
import type { IValidation } from "typia";
import type { RowContext, StreamDefinition } from "../../src/shared/stream-definition";
import { compileRowEncoder, type RowEncoder } from "./row-encoder";

/** A column's value as text, the way the id table receives it. */
export type RawColumn = (record: unknown, ctx: RowContext) => string;

export interface CompiledStream {
  definition: StreamDefinition;
  /** Position in config/streams: also the index of the stream's commit target (commit/commit-targets.ts). */
  order: number;
  /** The stream's validator: refusing unknown fields, or dropping them (`ignoreUnknownStreams`). */
  validate: (input: unknown) => IValidation<unknown>;
  encode: RowEncoder<unknown>;
  /** Deduplicating streams: a row's id and event time as the id table stores them. */
  keyOf: RawColumn | null;
  timeOf: RawColumn | null;
}

export interface StreamTable {
  byName: Map<string, CompiledStream>;
  /** Line formats: the stream a line's prefix (`O` of `O|...`) routes it to. */
  byLinePrefix: Map<string, CompiledStream>;
  /** The prefixes as error messages list them: `O|, L|, ...`. */
  linePrefixes: string;
}

export function compileStreams(
  definitions: readonly StreamDefinition[],
  schema: string,
  dedupStreams: readonly string[],
  ignoreUnknownStreams: readonly string[] = [],
): StreamTable {
  const dedup = new Set(dedupStreams);
  const ignoring = new Set(ignoreUnknownStreams);
  const byName = new Map<string, CompiledStream>();
  const byLinePrefix = new Map<string, CompiledStream>();
  definitions.forEach((definition, order) => {
    // The stream's commit target claims ids, with or without times, by this same shape.
    const shape = dedup.has(definition.name) ? dedupShape(schema, definition) : null;
    const stream: CompiledStream = {
      definition,
      order,
      validate: (ignoring.has(definition.name) ? definition.validateIgnoringUnknown : undefined) ?? definition.validate,
      encode: compileRowEncoder(definition),
      keyOf: shape !== null ? rawColumn(definition, definition.dedupKey) : null,
      timeOf: shape?.withTime ? rawColumn(definition, definition.timeColumn) : null,
    };
    byName.set(definition.name, stream);
    if (definition.linePrefix) byLinePrefix.set(definition.linePrefix, stream);
  });
  const linePrefixes = [...byLinePrefix.keys()].map((p) => `${p}|`).join(", ");
  return { byName, byLinePrefix, linePrefixes };
}

function rawColumn(definition: StreamDefinition, name: string | undefined): RawColumn | null {
  const column = definition.columns.find((c) => c.name === name);
  if (!column) return null;
  if (column.type === "timestamptz") {
    return (record, ctx) => {
      const v = column.value(record, ctx);
      return typeof v === "number" ? new Date(v).toISOString() : String(v);
    };
  }
  return (record, ctx) => String(column.value(record, ctx));
}

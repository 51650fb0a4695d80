/**
 * The worker's table of streams, built once at thread start from config/streams: each stream's definition
 * (with its typia validator and line parser), its compiled row encoder, and for a deduplicating stream the
 * extractor of a row's id-state key.
 */
import { dedupShape } from "../../src/shared/dedup-sql";
import type { IValidation } from "typia";
import { dedupKey } from "../../src/shared/dedup-key";
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
  /** Deduplicating streams: a row's key in the id state (src/shared/dedup-key.ts). */
  keyOf: RawColumn | null;
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
    // The stream's commit target claims ids by this same shape.
    const shape = dedup.has(definition.name) ? dedupShape(schema, definition) : null;
    const stream: CompiledStream = {
      definition,
      order,
      validate: (ignoring.has(definition.name) ? definition.validateIgnoringUnknown : undefined) ?? definition.validate,
      encode: compileRowEncoder(definition),
      keyOf: shape !== null ? keyColumn(definition) : null,
    };
    byName.set(definition.name, stream);
    if (definition.linePrefix) byLinePrefix.set(definition.linePrefix, stream);
  });
  const linePrefixes = [...byLinePrefix.keys()].map((p) => `${p}|`).join(", ");
  return { byName, byLinePrefix, linePrefixes };
}

function keyColumn(definition: StreamDefinition): RawColumn | null {
  const column = definition.columns.find((c) => c.name === definition.dedupKey);
  if (!column) return null;
  // A uuid column stores the value as PostgreSQL reads it, case aside.
  if (column.type === "uuid") return (record, ctx) => dedupKey(String(column.value(record, ctx)).toLowerCase());
  return (record, ctx) => dedupKey(String(column.value(record, ctx)));
}

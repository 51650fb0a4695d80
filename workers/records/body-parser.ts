import { isSkippedLine } from "../../src/shared/line-fields";
import type { RecordError, TaskFormat } from "../../src/shared/task-protocol";

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

export interface ParsedBody {
  /** Parsed records in body order; `undefined` marks a line that failed to parse (its error is in `errors`). */
  values: unknown[];
  /** Line numbers (1-based) of `values` for line formats; empty for a JSON body. */
  lines: number[];
  errors: RecordError[];
  /** The raw text of each entry of `errors` (the line that failed to parse), for its dead letter. */
  errorRaw: string[];
  /** The envelope's batch_id / priority, when the body was an envelope that carried them. */
  batchId?: string;
  priority?: number;
}

export class UnparseableBody extends Error {}

/** Decodes the shared-memory body as strict UTF-8; invalid bytes make the whole body unparseable. */
export function decodeBody(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new UnparseableBody("request body is not valid UTF-8");
  }
}

export function parseBody(text: string, format: TaskFormat, envelope: boolean): ParsedBody {
  if (text.trim().length === 0) throw new UnparseableBody("request body is empty");
  if (envelope) return parseEnvelope(text);
  if (format === "json") return parseJson(text);
  if (format === "ndjson") return parseLines(text, true);
  if (format === "text") return parseLines(text, false);
  // auto (WebSocket frames): one JSON value if the frame is one, NDJSON otherwise.
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return parseLines(text, true);
  }
  return fromJsonValue(value);
}

function parseJson(text: string): ParsedBody {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UnparseableBody(`malformed JSON: ${(err as Error).message}`);
  }
  return fromJsonValue(value);
}

function fromJsonValue(value: unknown): ParsedBody {
  if (Array.isArray(value) && value.length === 0) throw new UnparseableBody("request body has no records (empty array)");
  return { values: Array.isArray(value) ? value : [value], lines: [], errors: [], errorRaw: [] };
}

function parseEnvelope(text: string): ParsedBody {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UnparseableBody(`malformed JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new UnparseableBody('body must be an object {"events": [...], "batch_id"?, "priority"?}');
  }
  const env = value as { events?: unknown; batch_id?: unknown; priority?: unknown };
  if (!Array.isArray(env.events)) throw new UnparseableBody("events: expected an array of events");
  if (env.events.length === 0) throw new UnparseableBody("events: the array is empty");
  const parsed: ParsedBody = { values: env.events, lines: [], errors: [], errorRaw: [] };
  if (env.batch_id !== undefined) {
    if (typeof env.batch_id !== "string" || env.batch_id.length < 1 || env.batch_id.length > 128) {
      throw new UnparseableBody("batch_id: expected a string of 1 to 128 characters");
    }
    parsed.batchId = env.batch_id;
  }
  if (env.priority !== undefined) {
    if (typeof env.priority !== "number" || !Number.isInteger(env.priority) || env.priority < 0 || env.priority > 10) {
      throw new UnparseableBody("priority: expected an integer from 0 to 10");
    }
    parsed.priority = env.priority;
  }
  return parsed;
}

/** NDJSON (json = true) or plain text lines; blank (and text `#`) lines are skipped but still counted. */
function parseLines(text: string, json: boolean): ParsedBody {
  const parsed: ParsedBody = { values: [], lines: [], errors: [], errorRaw: [] };
  let start = 0;
  let line = 0;
  const n = text.length;
  while (start <= n) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = n;
    line++;
    let stop = end;
    if (stop > start && text.charCodeAt(stop - 1) === 13) stop--;
    if (stop > start) {
      const raw = text.slice(start, stop);
      if (!json) {
        if (!isSkippedLine(raw)) {
          parsed.values.push(raw);
          parsed.lines.push(line);
        }
      } else if (raw.trim().length > 0) {
        try {
          parsed.values.push(JSON.parse(raw));
        } catch (err) {
          parsed.values.push(undefined);
          parsed.errors.push({
            index: parsed.values.length - 1,
            line,
            path: "$",
            expected: "one JSON value per line",
            message: `line ${line}: malformed JSON: ${(err as Error).message}`,
          });
          parsed.errorRaw.push(raw);
        }
        parsed.lines.push(line);
      }
    }
    start = end + 1;
  }
  if (parsed.values.length === 0) throw new UnparseableBody("request body has no records");
  return parsed;
}

/**
 * Reads a record of the body again by its index. A task lets go of its parsed records and the body's text
 * before awaiting the commit; only the rare row PostgreSQL refuses needs its record back, so the body is
 * decoded and parsed again then from `body` (the same bytes, which the ring holds until the task settles: the
 * same values), at most once.
 */
export function recordReader(body: Uint8Array, format: TaskFormat, envelope: boolean): (index: number) => unknown {
  let reparsed: unknown[] | null = null;
  return (index) => (reparsed ??= parseBody(decodeBody(body), format, envelope).values)[index];
}

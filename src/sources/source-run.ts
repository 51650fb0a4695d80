/**
 * One run of a pull source (docs/sources.md#a-run): fetch every page, map its records onto the stream's
 * record, and hand each page to the submission path as one NDJSON body, so validation, deduplication,
 * upserts, COPY and dead letters (`source` `pull:<name>`) are those of pushed records. The run succeeds when
 * every page was fetched and committed; only then does the watermark move (to the highest value seen).
 */
import type { SourceConfig } from "../ops/source-config";
import type { IngestOutcome } from "../shared/task-protocol";
import type { RunResult } from "../storage/source-state";
import { atPath } from "./json-path";
import { resolveHeaders } from "./source-headers";
import type { HttpAttempts } from "./source-http";
import { sourcePages } from "./source-pages";

/** Characters of NDJSON per body handed over. */
const BODY_CHARS = 1024 * 1024;

/** NDJSON bodies of at most BODY_CHARS (a longer single record goes alone). */
function* bodies(lines: readonly string[]): Generator<string> {
  let from = 0;
  let chars = 0;
  for (let i = 0; i < lines.length; i++) {
    if (i > from && chars + lines[i].length + 1 > BODY_CHARS) {
      yield lines.slice(from, i).join("\n");
      from = i;
      chars = 0;
    }
    chars += lines[i].length + 1;
  }
  if (from < lines.length) yield lines.slice(from).join("\n");
}

/** Hands one body of records to the submission path and resolves with its committed outcome. */
export type SubmitRecords = (stream: string, ndjson: string, source: string) => Promise<IngestOutcome>;

/** The record the stream receives: the mapped fields, or the API's record as it is. */
export function mapRecord(record: unknown, fields: Record<string, string> | undefined): unknown {
  if (fields === undefined) return record;
  const out: Record<string, unknown> = {};
  for (const [field, path] of Object.entries(fields)) {
    const value = atPath(record, path);
    if (value !== undefined) out[field] = value;
  }
  return out;
}

/** Higher of two watermark values: numerically when both are numbers, else as text (ISO-8601 times sort so). */
export function laterWatermark(a: string | null, b: string): string {
  if (a === null) return b;
  const x = Number(a);
  const y = Number(b);
  if (a.trim() !== "" && b.trim() !== "" && Number.isFinite(x) && Number.isFinite(y)) return y > x ? b : a;
  return b > a ? b : a;
}

export async function runSource(
  name: string,
  source: SourceConfig,
  watermark: string | null,
  submit: SubmitRecords,
  http: HttpAttempts,
): Promise<RunResult> {
  const records = { accepted: 0, duplicates: 0, rejected: 0, fetched: 0, pages: 0 };
  let highest: string | null = null;
  try {
    const headers = resolveHeaders(source.headers);
    for await (const page of sourcePages(source, headers, watermark, http)) {
      records.pages++;
      if (page.records.length === 0) continue;
      records.fetched += page.records.length;
      const lines: string[] = [];
      for (const raw of page.records) {
        if (source.incremental) {
          const mark = atPath(raw, source.incremental.field);
          if (typeof mark === "string" || typeof mark === "number") highest = laterWatermark(highest, String(mark));
        }
        lines.push(JSON.stringify(mapRecord(raw, source.fields)));
      }
      // A large page goes as several bodies, each well under MAX_BODY_MB.
      for (const body of bodies(lines)) {
        const outcome = await submit(source.stream, body, `pull:${name}`);
        if (outcome.kind !== "done") throw new Error(`page ${records.pages}: not stored (${outcome.kind}): ${outcome.message}`);
        records.accepted += outcome.accepted;
        records.duplicates += outcome.duplicates;
        records.rejected += outcome.rejected;
      }
    }
  } catch (err) {
    return { ok: false, error: (err as Error).message, watermark: null, records };
  }
  return { ok: true, error: null, watermark: highest === null ? null : laterWatermark(watermark, highest), records };
}

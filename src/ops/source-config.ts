/**
 * `sources` in config/ingestd.json (docs/sources.md): what each pull source fetches, how it pages, and how
 * its records map onto a stream's record. Validated with the rest of the configuration (config.ts).
 */
import type { tags } from "typia";

type Int = number & tags.Type<"int32">;

export interface PagePagination {
  type: "page";
  /** Query parameter (REST) or variable (GraphQL) of the page number. */
  pageParam: string & tags.MinLength<1>;
  /** Query parameter or variable of the page size; omitted: none is sent. */
  sizeParam?: string & tags.MinLength<1>;
  size?: Int & tags.Minimum<1> & tags.Maximum<100000>;
  /** The first page's number (default 1). */
  firstPage?: Int & tags.Minimum<0>;
}

export interface CursorPagination {
  type: "cursor";
  /** Where the next cursor is in the response (`meta.next`, `data.countries.pageInfo.endCursor`); absent, null or "": last page. */
  cursorPath: string & tags.MinLength<1>;
  /** Query parameter (REST) or variable (GraphQL) the cursor is sent back as. */
  cursorParam: string & tags.MinLength<1>;
}

export type Pagination = { type: "none" } | PagePagination | CursorPagination | { type: "link" };

export interface Incremental {
  /** The field of the mapped record holding the watermark (an update time or a growing id). */
  field: string & tags.MinLength<1>;
  /** Query parameter (REST) or variable (GraphQL) the stored watermark is sent as, from the second run on. */
  param: string & tags.MinLength<1>;
}

export interface SourceConfig {
  kind: "rest" | "graphql";
  /** The stream the records go to. */
  stream: string & tags.MinLength<1>;
  url: string & tags.MinLength<1>;
  /** Default GET for rest; graphql always POSTs. */
  method?: "GET" | "POST";
  /** Header values may name environment variables as `${NAME}` (secrets: never logged, never served). */
  headers?: Record<string, string>;
  /** Fixed query parameters (rest). */
  params?: Record<string, string>;
  /** The GraphQL document (graphql). */
  query?: string & tags.MinLength<1>;
  /** Fixed GraphQL variables (graphql). */
  variables?: Record<string, unknown>;
  /** Where the records are in the response: a dotted path (`users`, `data.countries`); "" for the body itself. */
  records: string;
  /** The stream record's fields from response paths (`"continent": "continent.name"`); omitted: records as they are. */
  fields?: Record<string, string & tags.MinLength<1>>;
  pagination?: Pagination;
  incremental?: Incremental;
  /** Interval between runs: `30s`, `5m`, `1h`, `1d`. */
  every: string & tags.Pattern<"^[1-9][0-9]*(ms|s|m|h|d)$">;
  /** Per request (connect, headers and body). Default 10000. */
  timeoutMs?: Int & tags.Minimum<100> & tags.Maximum<600000>;
  /** Attempts after the first for one request on a network error, a timeout, 429 or 5xx. Default 4. */
  retries?: Int & tags.Minimum<0> & tags.Maximum<20>;
  /** First backoff; doubled each retry, full jitter, at most maxBackoffMs. Defaults 500 and 30000. */
  backoffMs?: Int & tags.Minimum<1> & tags.Maximum<600000>;
  maxBackoffMs?: Int & tags.Minimum<1> & tags.Maximum<3600000>;
  /** Pages one run fetches at most (a runaway API cannot make a run endless). Default 1000. */
  maxPages?: Int & tags.Minimum<1> & tags.Maximum<1000000>;
  /** false: configured but not run. */
  enabled?: boolean;
}

/** `every` in milliseconds. */
export function everyMs(every: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(every);
  if (!m) return Number.NaN;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "ms" | "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

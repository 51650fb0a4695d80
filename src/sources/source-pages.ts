/**
 * The pages of one run of a source (docs/sources.md#pagination): builds each request (REST query parameters,
 * or a GraphQL document and variables POSTed as GraphQL does), finds the records in each answer, and
 * follows the source's pagination until the last page.
 */
import type { SourceConfig } from "../ops/source-config";
import { atPath } from "./json-path";
import { requestJson, type HttpAttempts } from "./source-http";

export interface Page {
  records: unknown[];
}

export class SourceDataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SourceDataError";
  }
}

/** The URL of the next page in an RFC 8288 Link header (`<…>; rel="next"`), resolved against `base`. */
export function nextLink(header: string | string[] | undefined, base: string): string | null {
  const value = Array.isArray(header) ? header.join(",") : header;
  if (!value) return null;
  for (const part of value.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (m && /;\s*rel\s*=\s*"?([^";]*\s)?next(\s[^";]*)?"?\s*(;|$)/i.test(m[2])) return new URL(m[1], base).toString();
  }
  return null;
}

/** Yields each page's records; `watermark` (from an earlier run) is sent as the incremental parameter. */
export async function* sourcePages(
  source: SourceConfig,
  headers: Record<string, string>,
  watermark: string | null,
  http: HttpAttempts,
): AsyncGenerator<Page> {
  const pagination = source.pagination ?? { type: "none" };
  const maxPages = source.maxPages ?? 1000;
  /** Parameters (REST) or variables (GraphQL) that change from page to page. */
  const paging: Record<string, string | number> = {};
  if (watermark !== null && source.incremental) paging[source.incremental.param] = watermark;
  let page = pagination.type === "page" ? (pagination.firstPage ?? 1) : 0;
  let url: string = source.url;
  let lastCursor: unknown;
  for (let n = 0; n < maxPages; n++) {
    if (pagination.type === "page") {
      paging[pagination.pageParam] = page;
      if (pagination.sizeParam && pagination.size) paging[pagination.sizeParam] = pagination.size;
    }
    const answer = await requestJson(...requestFor(source, url, headers, paging, n > 0 && pagination.type === "link"), http);
    const body = answer.body as { errors?: Array<{ message?: string }> } | null;
    if (source.kind === "graphql" && Array.isArray(body?.errors) && body.errors.length > 0) {
      throw new SourceDataError(`GraphQL errors: ${body.errors.map((e) => e?.message ?? JSON.stringify(e)).join("; ")}`);
    }
    const records = atPath(answer.body, source.records);
    if (!Array.isArray(records)) {
      throw new SourceDataError(
        `records: no array at ${JSON.stringify(source.records)} in the answer (found ${records === null ? "null" : typeof records})`,
      );
    }
    yield { records };
    if (pagination.type === "none") return;
    if (pagination.type === "page") {
      if (records.length === 0 || (pagination.size !== undefined && records.length < pagination.size)) return;
      page++;
    } else if (pagination.type === "cursor") {
      const cursor = atPath(answer.body, pagination.cursorPath);
      if (cursor === undefined || cursor === null || cursor === "" || cursor === lastCursor) return;
      lastCursor = cursor;
      paging[pagination.cursorParam] = typeof cursor === "number" ? cursor : String(cursor);
    } else {
      const next = nextLink(answer.headers.link, url);
      if (next === null) return;
      url = next;
    }
  }
  throw new SourceDataError(`more than maxPages (${maxPages}) pages; raise sources.<name>.maxPages if the API is that large`);
}

type RequestArgs = [string, { method: string; headers: Record<string, string>; body?: string }];

/** `followed`: a Link URL, which carries its own query (the fixed parameters are not added again). */
function requestFor(
  source: SourceConfig,
  url: string,
  headers: Record<string, string>,
  paging: Record<string, string | number>,
  followed: boolean,
): RequestArgs {
  if (source.kind === "graphql") {
    const variables = { ...(source.variables ?? {}), ...paging };
    return [
      url,
      {
        method: "POST",
        headers: { accept: "application/graphql-response+json, application/json", "content-type": "application/json", ...headers },
        body: JSON.stringify({ query: source.query, variables }),
      },
    ];
  }
  const target = new URL(url);
  if (!followed) {
    for (const [k, v] of Object.entries(source.params ?? {})) target.searchParams.set(k, v);
    for (const [k, v] of Object.entries(paging)) target.searchParams.set(k, String(v));
  }
  const method = source.method ?? "GET";
  return [target.toString(), { method, headers: { accept: "application/json", ...headers } }];
}

/**
 * `ingestd sources list | run NAME` (docs/sources.md#cli): asks the running daemon, which owns the sources'
 * runs (a run needs its ring and workers), over its HTTP API.
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../ops/config";
import { localUrl } from "./top";
import { UsageError } from "./usage-error";

export const SOURCES_HELP = `Usage: ingestd sources list [--url URL] [--json]
       ingestd sources run NAME [--url URL] [--key KEY]

list   each pull source: state, last and next run, last run's records, error, watermark (GET /v1/sources)
run    runs the source now, whatever its schedule, and prints the outcome (POST /v1/sources/NAME/run);
       the key (--key, or INGESTD_KEY) must be allowed to write the source's stream when keys are configured

URL defaults to http://HOST:PORT from the configuration. Exit status: 0 ok; 1 the run failed; 2 the daemon
could not be asked, or the source is running elsewhere (409).
`;

interface View {
  name: string;
  kind: string;
  stream: string;
  every: string;
  state: string;
  last_run_at: string | null;
  next_run_at: string | null;
  records: { accepted: number; duplicates: number; rejected: number; fetched: number } | null;
  error: string | null;
  watermark: string | null;
}

function line(v: View): string {
  const r = v.records;
  const records = r ? `${r.fetched} fetched, ${r.accepted} accepted, ${r.duplicates} dup, ${r.rejected} rejected` : "-";
  const cols = [v.name, v.kind, v.stream, v.every, v.state, v.last_run_at ?? "-", v.next_run_at ?? "-", records, v.watermark ?? "-"];
  return `${cols.join("  ")}${v.error ? `\n    error: ${v.error}` : ""}`;
}

export async function sourcesCommand(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    out.write(SOURCES_HELP);
    return sub === undefined ? 64 : 0;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: { url: { type: "string" }, key: { type: "string" }, json: { type: "boolean" } },
  });
  const base = (values.url ?? localUrl(loadConfig())).replace(/\/+$/, "");
  const key = values.key ?? process.env.INGESTD_KEY;
  const headers: Record<string, string> = key ? { authorization: `Bearer ${key}` } : {};
  if (sub === "list") {
    if (positionals.length > 0) throw new UsageError(`sources list: unexpected ${positionals.join(" ")}\n\n${SOURCES_HELP}`);
    const res = await ask(`${base}/v1/sources`, { headers });
    if (res === null) return 2;
    const views = (res.body as { sources: View[] }).sources;
    if (values.json) out.write(`${JSON.stringify(views, null, 2)}\n`);
    else if (views.length === 0) out.write("no pull sources configured (sources in config/ingestd.json)\n");
    else out.write(`NAME  KIND  STREAM  EVERY  STATE  LAST RUN  NEXT RUN  RECORDS  WATERMARK\n${views.map(line).join("\n")}\n`);
    return 0;
  }
  if (sub === "run") {
    if (positionals.length !== 1) throw new UsageError(`sources run: name one source\n\n${SOURCES_HELP}`);
    const res = await ask(`${base}/v1/sources/${encodeURIComponent(positionals[0])}/run`, { method: "POST", headers });
    if (res === null) return 2;
    if (res.status !== 200) {
      process.stderr.write(`ingestd sources run: ${res.status} ${(res.body as { message?: string }).message ?? ""}\n`);
      return res.status === 409 || res.status >= 500 ? 2 : 1;
    }
    const view = res.body as View;
    out.write(values.json ? `${JSON.stringify(view, null, 2)}\n` : `${line(view)}\n`);
    return view.state === "failing" ? 1 : 0;
  }
  throw new UsageError(`sources: unknown subcommand ${JSON.stringify(sub)}\n\n${SOURCES_HELP}`);
}

async function ask(url: string, init: RequestInit): Promise<{ status: number; body: unknown } | null> {
  try {
    const res = await fetch(url, init);
    const text = await res.text();
    let body: unknown = {};
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text };
    }
    return { status: res.status, body };
  } catch (err) {
    process.stderr.write(`ingestd sources: cannot reach ${url}: ${(err as Error).message}\n`);
    return null;
  }
}

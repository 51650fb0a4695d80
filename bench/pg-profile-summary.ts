/**
 * Where PostgreSQL's CPU goes under bench load, from `perf` samples of its processes with their call stacks
 * (docs/performance.md#postgresqls-cpu-per-event): each sample is put in the stage of the first function of
 * its stack named below, from the outermost frame in, and the stages are printed as shares of the samples,
 * and as µs per event when the phase's PostgreSQL µs/event (the bench's report) is given.
 *
 *   perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$(pgrep -d, -x postgres)" -o pg.perf -- sleep 6
 *   perf script -i pg.perf -F comm,pid,ip,sym > pg.stacks
 *   node dist/bench/pg-profile-summary.js pg.stacks [postgres µs/event]
 *
 * A COPY's work is split by what PostgreSQL does for each row (index insertion, heap insertion, the input
 * functions of its columns), whichever table it fills: compare a phase with deduplication against one without
 * to see the id state's share.
 */
import fs from "node:fs";

/** The first function of a stack (outermost first) found here names the sample's stage; order matters. */
const PROCESS_STAGES: ReadonlyArray<[string, string]> = [
  ["AutoVacWorkerMain", "autovacuum"],
  ["CheckpointerMain", "checkpointer"],
  ["BackgroundWriterMain", "background writer"],
  ["WalWriterMain", "WAL writer"],
];

/** Within a COPY FROM, by the innermost of these on the stack (a row's index insertion calls input functions no more). */
const COPY_FROM_STAGES: ReadonlyArray<[string, string]> = [
  ["ExecInsertIndexTuples", "COPY FROM: index insertion"],
  ["heap_multi_insert", "COPY FROM: heap insertion"],
  ["jsonb_in", "COPY FROM: jsonb input"],
  ["jsonb_from_cstring", "COPY FROM: jsonb input"],
  ["timestamptz_in", "COPY FROM: timestamptz input"],
  ["CopyReadBinaryAttribute", "COPY FROM: binary input"],
  ["ExecFindPartition", "COPY FROM: partition routing"],
  ["NextCopyFrom", "COPY FROM: reading and splitting rows"],
];

const STATEMENT_STAGES: ReadonlyArray<[string, string]> = [
  ["DoCopyTo", "COPY TO"],
  ["plpgsql_call_handler", "PL/pgSQL functions"],
  ["CommitTransaction", "commit"],
  ["pg_plan_queries", "planning"],
  ["pg_parse_query", "parsing"],
  ["exec_bind_message", "parameterised statements"],
  ["exec_execute_message", "parameterised statements"],
  ["exec_simple_query", "other statements"],
  ["pq_getbyte", "reading from the client"],
  ["pq_getmessage", "reading from the client"],
];

/** Cuts across stages: the share of samples with these functions anywhere on their stack. */
const WITHIN: ReadonlyArray<[string, string]> = [
  ["XLogInsert", "writing WAL records (XLogInsert)"],
  ["FlushBuffer", "writing out dirty buffers (FlushBuffer)"],
  ["pg_checksum_page", "page checksums"],
];

/** One sample's stack, outermost frame first (perf prints the innermost first). */
export function stagesOf(stack: readonly string[]): { stage: string; within: string[] } {
  const has = new Set(stack);
  const within = WITHIN.filter(([fn]) => has.has(fn)).map(([, name]) => name);
  for (const [fn, name] of PROCESS_STAGES) if (has.has(fn)) return { stage: name, within };
  if (has.has("CopyFrom")) {
    let innermost = -1;
    let stage = "COPY FROM: other";
    for (const [fn, name] of COPY_FROM_STAGES) {
      const at = stack.lastIndexOf(fn);
      if (at > innermost) {
        innermost = at;
        stage = name;
      }
    }
    return { stage, within };
  }
  for (const [fn, name] of STATEMENT_STAGES) if (has.has(fn)) return { stage: name, within };
  return { stage: `other (${stack[stack.length - 1] ?? "?"})`, within };
}

/** The stacks of `perf script -F comm,pid,ip,sym` output: one block per sample, a frame per line, innermost first. */
export function parseStacks(text: string): string[][] {
  const stacks: string[][] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const lines = block.split("\n").filter((l) => l.trim() !== "");
    if (lines.length < 2) continue;
    // The first line names the process; then one frame a line.
    stacks.push(lines.slice(1).map(symbolOf).reverse());
  }
  return stacks;
}

/** The function of a frame line, "<ip> <symbol>[+0x<offset>]" (or "[unknown]"). */
function symbolOf(line: string): string {
  const symbol = line.trim().split(/\s+/)[1] ?? "?";
  return symbol.replace(/\+0x[0-9a-f]+$/, "");
}

export function summarizePg(text: string, usPerEvent: number | null): string {
  const stacks = parseStacks(text);
  const byStage = new Map<string, number>();
  const byWithin = new Map<string, number>();
  for (const stack of stacks) {
    const { stage, within } = stagesOf(stack);
    byStage.set(stage, (byStage.get(stage) ?? 0) + 1);
    for (const w of within) byWithin.set(w, (byWithin.get(w) ?? 0) + 1);
  }
  const n = Math.max(1, stacks.length);
  const line = (name: string, count: number) =>
    `  ${((100 * count) / n).toFixed(1).padStart(5)}%${usPerEvent === null ? "" : `  ${((usPerEvent * count) / n).toFixed(2).padStart(6)} µs/event`}  ${name}`;
  const other = [...byStage].filter(([s]) => s.startsWith("other (")).reduce((sum, [, c]) => sum + c, 0);
  const named = [...byStage].filter(([s]) => !s.startsWith("other ("));
  return [
    `${stacks.length} samples of PostgreSQL's processes, by stage:`,
    ...named.sort((a, b) => b[1] - a[1]).map(([s, c]) => line(s, c)),
    line("other (outside any statement named above: idle loops, the stacks perf could not unwind)", other),
    "of which, across stages:",
    ...[...byWithin].sort((a, b) => b[1] - a[1]).map(([s, c]) => line(s, c)),
  ].join("\n");
}

if (require.main === module) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write("usage: node dist/bench/pg-profile-summary.js STACKS [postgres µs/event]\n");
    process.exit(64);
  }
  const us = process.argv[3] === undefined ? null : Number(process.argv[3]);
  process.stdout.write(`${summarizePg(fs.readFileSync(file, "utf8"), us)}\n`);
}

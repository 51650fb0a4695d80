/**
 * Summarises V8 .cpuprofile files (from `BENCH_DAEMON_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR"`, one file
 * per thread of the daemon): self time by function and by module, per thread, to see where the daemon's
 * CPU goes under bench load.
 *
 *   node dist/bench/profile-summary.js DIR [top]
 *
 * Last, the daemon's samples of all threads by pipeline stage (the README's per-stage breakdown): shares of
 * its busy time, to be scaled by the bench's measured CPU per event (sample times are wall time, so on a
 * busy machine they overstate CPU; their shares hold).
 */
import fs from "node:fs";
import path from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** A readable home for a frame: the package or project file, or a V8 pseudo-frame. */
function moduleOf(url: string): string {
  if (url === "") return "(native / V8)";
  const nm = url.lastIndexOf("node_modules/");
  if (nm !== -1) {
    const rest = url.slice(nm + "node_modules/".length).split("/");
    return rest[0].startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0];
  }
  if (url.startsWith("node:")) return url;
  const dist = url.indexOf("/dist/");
  return dist !== -1 ? url.slice(dist + "/dist/".length) : url;
}

/** The pipeline stage a frame's self time belongs to; worker threads only (the front thread is one stage). */
function stageOf(functionName: string, url: string): string {
  if (functionName === "(garbage collector)") return "garbage collection";
  if (functionName === "(program)") return "V8 (program)";
  if (url.includes("/records/body-parser")) return "JSON.parse (records/body-parser)";
  if (
    url.includes("/config/streams/") ||
    url.includes("/records/validate") ||
    url.includes("node_modules/typia/") ||
    functionName.startsWith("RegExp: ^[0-9]{4}")
  ) {
    return "typia validation";
  }
  if (functionName === "encodeJson") return "jsonb re-serialisation (JSON.stringify)";
  if (url.includes("/records/row-encoder") || functionName.startsWith("RegExp: [\\")) return "COPY escaping and row assembly";
  if (url.includes("/workers/commit/") || functionName === "writeBuffer" || /node_modules\/pg(-protocol)?\//.test(url))
    return "COPY send (join, pg, socket writes)";
  return "other (task plumbing, start-up)";
}

/** Busy self time by stage over all the profiles: worker threads by stageOf, the main thread as a whole. */
export function summarizeStages(files: readonly string[]): string {
  const byStage = new Map<string, number>();
  let total = 0;
  for (const file of files) {
    const profile = JSON.parse(fs.readFileSync(file, "utf8")) as CpuProfile;
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    // Node names main-thread profiles ...<pid>.0.<seq>.cpuprofile (thread id 0).
    const main = /\.0\.\d+\.cpuprofile$/.test(file);
    for (let i = 0; i < profile.samples.length; i++) {
      const f = byId.get(profile.samples[i])!.callFrame;
      if (f.functionName === "(idle)") continue;
      const us = profile.timeDeltas[i] ?? 0;
      const stage = main ? "front thread (uWS, ring, acks, metrics)" : stageOf(f.functionName, f.url);
      byStage.set(stage, (byStage.get(stage) ?? 0) + us);
      total += us;
    }
  }
  const lines = ["by pipeline stage, all threads (share of busy samples):"];
  for (const [stage, us] of [...byStage].sort((a, b) => b[1] - a[1])) {
    lines.push(`  ${((100 * us) / Math.max(1, total)).toFixed(1).padStart(5)}%  ${stage}`);
  }
  return lines.join("\n");
}

export function summarize(file: string, top: number): string {
  const profile = JSON.parse(fs.readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const byFunction = new Map<string, number>();
  const byModule = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const f = byId.get(id)!.callFrame;
    if (f.functionName === "(idle)") {
      idle += us;
      continue;
    }
    total += us;
    const name = `${f.functionName || "(anonymous)"}  ${moduleOf(f.url)}${f.url ? `:${f.lineNumber + 1}` : ""}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + us);
    const mod = f.functionName === "(garbage collector)" ? "(garbage collector)" : moduleOf(f.url);
    byModule.set(mod, (byModule.get(mod) ?? 0) + us);
  }
  const wall = profile.endTime - profile.startTime;
  const pct = (us: number) => `${((100 * us) / Math.max(1, total)).toFixed(1).padStart(5)}%`;
  const lines = [
    `${path.basename(file)}: ${(total / 1e6).toFixed(2)} s busy of ${(wall / 1e6).toFixed(2)} s (${((100 * total) / Math.max(1, wall)).toFixed(0)}%), idle ${(idle / 1e6).toFixed(2)} s`,
    "  by module:",
    ...[...byModule]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([m, us]) => `    ${pct(us)}  ${m}`),
    "  by function (self time):",
    ...[...byFunction]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([f, us]) => `    ${pct(us)}  ${f}`),
  ];
  return lines.join("\n");
}

if (require.main === module) {
  const dir = process.argv[2];
  const top = Number(process.argv[3] ?? 25);
  if (!dir) {
    process.stderr.write("usage: node dist/bench/profile-summary.js DIR [top]\n");
    process.exit(64);
  }
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".cpuprofile"))
    .map((f) => path.join(dir, f));
  for (const file of files) process.stdout.write(`${summarize(file, top)}\n\n`);
  process.stdout.write(`${summarizeStages(files)}\n`);
}

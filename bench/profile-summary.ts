/**
 * Summarises V8 .cpuprofile files (from `BENCH_DAEMON_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR"`, one file
 * per thread of the daemon): self time by function and by module, per thread, to see where the daemon's
 * CPU goes under bench load.
 *
 *   node dist/bench/profile-summary.js DIR [top]
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
}

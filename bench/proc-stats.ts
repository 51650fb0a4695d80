/**
 * What the processes of a run cost, read from /proc (Linux): resident memory of the daemon (its worker
 * threads share the process, so VmRSS covers them) and CPU time of the daemon, of PostgreSQL and of the
 * whole machine, so a report can say where the cores went.
 */
import fs from "node:fs";

/** Clock ticks per second of /proc/<pid>/stat times; 100 on every Linux this runs on. */
const TICKS_PER_S = 100;

function readFile(file: string): string | null {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return null;
  }
}

/** VmRSS and VmHWM (peak) in KiB; null once the process is gone. */
export function memoryKiB(pid: number): { rss: number; hwm: number } | null {
  const status = readFile(`/proc/${pid}/status`);
  if (status === null) return null;
  const rss = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  const hwm = /^VmHWM:\s+(\d+)\s+kB/m.exec(status);
  return rss ? { rss: Number(rss[1]), hwm: hwm ? Number(hwm[1]) : Number(rss[1]) } : null;
}

interface StatFields {
  ppid: number;
  /** utime + stime, seconds. */
  own: number;
  /** cutime + cstime: reaped children, seconds. */
  children: number;
}

function stat(pid: number | string): StatFields | null {
  const text = readFile(`/proc/${pid}/stat`);
  if (text === null) return null;
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
  return {
    ppid: Number(f[1]),
    own: (Number(f[11]) + Number(f[12])) / TICKS_PER_S,
    children: (Number(f[13]) + Number(f[14])) / TICKS_PER_S,
  };
}

/** CPU seconds used so far by one process (all its threads). */
export function processCpuSeconds(pid: number): number | null {
  return stat(pid)?.own ?? null;
}

/** CPU seconds used so far by a process's main thread (its thread id is its pid). */
export function mainThreadCpuSeconds(pid: number): number | null {
  return stat(`${pid}/task/${pid}`)?.own ?? null;
}

/**
 * CPU seconds used so far by a process tree one level deep (PostgreSQL: the postmaster and its backends),
 * including backends that already exited (counted in the postmaster's cutime once reaped).
 */
export function treeCpuSeconds(rootPid: number): number | null {
  const root = stat(rootPid);
  if (root === null) return null;
  let total = root.own + root.children;
  for (const entry of fs.readdirSync("/proc")) {
    if (entry.charCodeAt(0) < 48 || entry.charCodeAt(0) > 57) continue;
    const s = stat(entry);
    if (s !== null && s.ppid === rootPid) total += s.own;
  }
  return total;
}

/** Machine-wide busy and total CPU seconds (all cores) from /proc/stat. */
export function machineCpuSeconds(): { busy: number; total: number } | null {
  const text = readFile("/proc/stat");
  if (text === null) return null;
  const line = text.slice(0, text.indexOf("\n")).trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...
  const idle = line[3] + (line[4] ?? 0);
  const total = line.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / TICKS_PER_S, total: total / TICKS_PER_S };
}

/** Samples the daemon's RSS on a timer; the peak over a span is read with `peakSince`. */
export class RssSampler {
  private timer: NodeJS.Timeout | null = null;
  private spanPeakKiB = 0;
  peakKiB = 0;
  lastKiB = 0;

  constructor(
    private readonly pid: number,
    private readonly intervalMs = 100,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** The kernel's own peak (VmHWM) covers spikes between samples. */
  hwmKiB(): number {
    return memoryKiB(this.pid)?.hwm ?? 0;
  }

  /** Starts a new span; returns the peak of the one that ended. */
  resetSpan(): number {
    this.sample();
    const peak = this.spanPeakKiB;
    this.spanPeakKiB = this.lastKiB;
    return peak;
  }

  private sample(): void {
    const m = memoryKiB(this.pid);
    if (m === null) return;
    this.lastKiB = m.rss;
    if (m.rss > this.peakKiB) this.peakKiB = m.rss;
    if (m.rss > this.spanPeakKiB) this.spanPeakKiB = m.rss;
  }
}

/** CPU used by the daemon, PostgreSQL and the machine between two points, in cores (CPU s / wall s). */
export interface CpuShare {
  wall_s: number;
  daemon_cores: number | null;
  /** The daemon's main thread alone (uWS front, dispatch, acks); the rest is workers and V8 helpers. */
  daemon_main_cores: number | null;
  postgres_cores: number | null;
  machine_busy_cores: number | null;
  machine_cores: number;
}

export class CpuMeter {
  private readonly startedAt = Date.now();
  private readonly daemon: number | null;
  private readonly daemonMain: number | null;
  private readonly postgres: number | null;
  private readonly machine: { busy: number; total: number } | null;

  constructor(
    private readonly daemonPid: number | null,
    private readonly postgresPid: number | null,
  ) {
    this.daemon = daemonPid === null ? null : processCpuSeconds(daemonPid);
    this.daemonMain = daemonPid === null ? null : mainThreadCpuSeconds(daemonPid);
    this.postgres = postgresPid === null ? null : treeCpuSeconds(postgresPid);
    this.machine = machineCpuSeconds();
  }

  read(cores: number): CpuShare {
    const wall = (Date.now() - this.startedAt) / 1000;
    const per = (a: number | null, b: number | null) =>
      a === null || b === null || wall <= 0 ? null : Math.round(((b - a) / wall) * 100) / 100;
    const m = machineCpuSeconds();
    return {
      wall_s: Math.round(wall * 100) / 100,
      daemon_cores: per(this.daemon, this.daemonPid === null ? null : processCpuSeconds(this.daemonPid)),
      daemon_main_cores: per(this.daemonMain, this.daemonPid === null ? null : mainThreadCpuSeconds(this.daemonPid)),
      postgres_cores: per(this.postgres, this.postgresPid === null ? null : treeCpuSeconds(this.postgresPid)),
      machine_busy_cores:
        this.machine === null || m === null || m.total === this.machine.total
          ? null
          : Math.round(((m.busy - this.machine.busy) / (m.total - this.machine.total)) * cores * 100) / 100,
      machine_cores: cores,
    };
  }
}

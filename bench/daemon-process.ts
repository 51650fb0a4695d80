/**
 * The real daemon as a child process (`node dist/src/cli.js serve`), exactly as an operator runs it, on a
 * free port of 127.0.0.1 against the bench's database.
 */
import { createInterface } from "node:readline";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

export const ROOT = path.resolve(__dirname, "../..");
const CLI = path.join(ROOT, "dist/src/cli.js");

/** The node flags of the shipped unit's ExecStart (systemd/ingestd.service): the daemon runs as deployed. */
export function unitNodeArgs(): string[] {
  const unit = fs.readFileSync(path.join(ROOT, "systemd/ingestd.service"), "utf8");
  const words = /^ExecStart=(.*)$/m.exec(unit)?.[1].trim().split(/\s+/) ?? [];
  const cli = words.findIndex((w) => w.endsWith("/cli.js"));
  return cli > 1 ? words.slice(1, cli) : [];
}

/** Lines of daemon output kept for error reports (warnings and errors are what matter). */
const KEEP_LINES = 200;

export interface DaemonProcess {
  child: ChildProcess;
  pid: number;
  port: number;
  /** Fields of its "ingestd listening" log line (workers, ring_mb, ...). */
  listening: Record<string, unknown>;
  /** Last lines of its output. */
  output: string[];
  /** Log lines at warn level or above, counted over the run. */
  warnings(): number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, wait for the drain; SIGKILL past `timeoutMs`. */
  stop(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean }>;
}

export async function startDaemon(options: {
  databaseUrl: string;
  env: Record<string, string>;
  /** Node flags after the unit's (unitNodeArgs). */
  nodeArgs: string[];
  startTimeoutMs: number;
  onLine?: (line: string) => void;
}): Promise<DaemonProcess> {
  const child = spawn(process.execPath, [...unitNodeArgs(), ...options.nodeArgs, CLI, "serve"], {
    cwd: ROOT,
    env: {
      ...process.env,
      LOG_LEVEL: "info",
      ...options.env,
      DATABASE_URL: options.databaseUrl,
      HOST: "127.0.0.1",
      PORT: "0",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  let warnings = 0;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  let onListening: ((entry: Record<string, unknown>) => void) | null = null;
  const onLine = (line: string) => {
    output.push(line);
    if (output.length > KEEP_LINES) output.shift();
    let entry: Record<string, unknown> | null = null;
    try {
      entry = JSON.parse(line);
    } catch {
      // not a JSON log line (a crash trace)
    }
    // pino levels: 40 warn, 50 error, 60 fatal.
    if (entry === null || (typeof entry.level === "number" && entry.level >= 40)) {
      warnings++;
      options.onLine?.(line);
    }
    if (entry && typeof entry.msg === "string" && entry.msg.startsWith("ingestd listening") && entry.port) onListening?.(entry);
  };
  for (const input of [child.stdout!, child.stderr!]) createInterface({ input, crlfDelay: Infinity }).on("line", onLine);

  let listening: Record<string, unknown>;
  try {
    listening = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`daemon did not start within ${options.startTimeoutMs} ms:\n${output.join("\n")}`)),
        options.startTimeoutMs,
      );
      onListening = (entry) => {
        clearTimeout(timer);
        resolve(entry);
      };
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`daemon exited (${code ?? signal}) before listening:\n${output.join("\n")}`));
      });
    });
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }

  return {
    child,
    pid: child.pid!,
    port: Number(listening.port),
    listening,
    output,
    warnings: () => warnings,
    exited,
    async stop(timeoutMs) {
      if (child.exitCode !== null || child.signalCode !== null) return { ...(await exited), killed: false };
      child.kill("SIGTERM");
      let killed = false;
      const timer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, timeoutMs);
      const result = await exited;
      clearTimeout(timer);
      return { ...result, killed };
    },
  };
}

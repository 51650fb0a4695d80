/**
 * `ingestd bench [options]`: runs the benchmark as a child process, `node dist/bench/run.js <args>`, and
 * exits with its status. Run, not imported: bench/ is a leaf that nothing in src/ depends on.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** Compiled beside src/: dist/src/commands/bench.js -> dist/bench/run.js. */
const BENCH_SCRIPT = path.resolve(__dirname, "../../bench/run.js");

export function benchCommand(argv: string[]): Promise<number> {
  if (!fs.existsSync(BENCH_SCRIPT)) {
    process.stderr.write(`ingestd: the benchmark is not installed (${BENCH_SCRIPT} not found)\n`);
    return Promise.resolve(1);
  }
  const child = spawn(process.execPath, [BENCH_SCRIPT, ...argv], { stdio: "inherit" });
  // Ctrl-C reaches the bench itself (same foreground process group), so SIGINT is only kept from killing
  // this process; passing it on too would hit the bench twice, and its second SIGINT skips the cleanup.
  // SIGTERM and SIGHUP usually come to this pid alone (a supervisor, kill PID): passed on, the bench stops
  // its daemon and generators as it would when run directly.
  const ignore = () => undefined;
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  process.on("SIGINT", ignore);
  process.on("SIGTERM", forward);
  process.on("SIGHUP", forward);
  return new Promise<number>((resolve, reject) => {
    const done = () => {
      process.off("SIGINT", ignore);
      process.off("SIGTERM", forward);
      process.off("SIGHUP", forward);
    };
    child.once("error", (err) => {
      done();
      reject(err);
    });
    child.once("exit", (code, signal) => {
      done();
      // Killed by a signal: the shell's convention, 128 + its number.
      resolve(code ?? 128 + (signal === null ? 0 : os.constants.signals[signal]));
    });
  });
}

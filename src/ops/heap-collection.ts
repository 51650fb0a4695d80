/**
 * Starts a full collection of this thread's heap now, where V8 would wait for its old generation to grow. The
 * front thread's old generation grows slowly, so the filter buffers it no longer holds (a group's previous
 * copy, a filter folded or dropped with its generations) and the large buffers of the filters written to
 * PostgreSQL stayed allocated until its next full collection: 45 MiB of them freed by one, measured at a
 * 16 MiB filter budget (docs/performance.md#memory).
 *
 * vm.measureMemory with eager execution asks for one without `--expose-gc` (or setting V8 flags at run time):
 * it starts incremental marking at once (the measurement itself is not used). It is marked experimental, and
 * its one-time ExperimentalWarning is kept out of the daemon's output, which is JSON log lines.
 */
import vm from "node:vm";

let warned = false;

/** Settles once the collection has run (callers need not wait for it). */
function startMarking(): Promise<void> {
  return vm.measureMemory({ mode: "summary", execution: "eager" }).then(
    () => undefined,
    () => undefined,
  );
}

export function collectGarbageSoon(): Promise<void> {
  if (warned) return startMarking();
  const emitWarning = process.emitWarning;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    if (!String(warning).includes("vm.measureMemory")) (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
  }) as typeof process.emitWarning;
  try {
    return startMarking();
  } finally {
    process.emitWarning = emitWarning;
    warned = true;
  }
}

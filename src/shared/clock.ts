import { performance } from "node:perf_hooks";

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable across worker threads (each thread's
 * performance.now() has its own origin, so the origin is added back).
 */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Streams an HTTP request body straight into a ring region. The region is sized from Content-Length up
 * front; when the ring has no room the socket is paused (uWS stops reading it, so TCP pushes back on the
 * producer) until room appears or the overload deadline passes.
 */
import { now } from "../../shared/clock";
import type { Ring, RingRegion } from "../ring";
import type { HttpResponse } from "../uws";

export type BodyResult =
  | { ok: true; region: RingRegion; ringAt: number }
  | { ok: false; reason: "overloaded" | "truncated" | "aborted" };

export interface BodyReadOptions {
  ring: Ring;
  length: number;
  priority: number;
  deadlineMs: number;
}

/**
 * Must be called synchronously inside the uWS request handler (onData has to be attached before it
 * returns). `done` is called exactly once. The caller owns the region afterwards and frees it.
 */
export function readBodyIntoRing(res: HttpResponse, options: BodyReadOptions, done: (result: BodyResult) => void): { abort(): void } {
  const { ring, length } = options;
  let region: RingRegion | null = ring.tryAlloc(length);
  /** Chunks that arrived before the region existed: at most what one socket read delivered. */
  let staged: Buffer[] | null = null;
  let received = 0;
  let complete = false;
  let finished = false;

  const finish = (result: BodyResult) => {
    if (finished) return;
    finished = true;
    if (!result.ok && region) {
      ring.free(region);
      region = null;
    }
    done(result);
  };

  const settleIfComplete = () => {
    if (!complete || !region || finished) return;
    if (received !== length) finish({ ok: false, reason: "truncated" });
    else finish({ ok: true, region, ringAt: now() });
  };

  if (region === null) {
    res.pause();
    staged = [];
    ring.alloc(length, options.priority, options.deadlineMs).then((r) => {
      if (r === null) return finish({ ok: false, reason: "overloaded" });
      if (finished) return ring.free(r);
      region = r;
      let at = r.offset;
      for (const chunk of staged!) {
        ring.bytes.set(chunk, at);
        at += chunk.length;
      }
      staged = null;
      res.resume();
      settleIfComplete();
    });
  }

  res.onData((chunk, isLast) => {
    if (finished) return;
    const n = chunk.byteLength;
    if (received + n > length) {
      finish({ ok: false, reason: "truncated" });
      return;
    }
    if (region !== null) ring.bytes.set(new Uint8Array(chunk), region.offset + received);
    else staged!.push(Buffer.from(new Uint8Array(chunk)));
    received += n;
    if (isLast) {
      complete = true;
      settleIfComplete();
    }
  });

  return {
    abort() {
      finish({ ok: false, reason: "aborted" });
    },
  };
}

/**
 * Streams an HTTP request body straight into a ring region. The region is sized from Content-Length up
 * front; when the ring has no room the socket is paused (uWS stops reading it, so TCP pushes back on the
 * producer) until room appears or the overload deadline passes.
 *
 * The ring serves waiting bodies by priority, but a body's priority is usually inside it, and the body is
 * read only once it has room. What a paused socket still delivers (one socket read: a small body whole) is
 * held meanwhile; when that is the whole body, `classify` reads its priority and the wait is raised to it.
 */
import { now } from "../../shared/clock";
import type { Ring, RingRegion } from "../ring";
import type { HttpResponse } from "../uws";

export type BodyResult =
  /** `priority`: the options' priority, or the higher one `classify` found while the body waited. */
  { ok: true; region: RingRegion; ringAt: number; priority: number } | { ok: false; reason: "overloaded" | "truncated" | "aborted" };

export interface BodyReadOptions {
  ring: Ring;
  length: number;
  /** Known before the body is read (named outside it); the ring's reserve is open to priority above 0. */
  priority: number;
  deadlineMs: number;
  /** The priority a complete body names, if it can name one (POST /v1/ingest/batch envelopes). */
  classify?: (body: Buffer) => number;
}

/**
 * Must be called synchronously inside the uWS request handler (onData has to be attached before it
 * returns). `done` is called exactly once. The caller owns the region afterwards and frees it.
 */
export function readBodyIntoRing(res: HttpResponse, options: BodyReadOptions, done: (result: BodyResult) => void): { abort(): void } {
  const { ring, length } = options;
  let priority = options.priority;
  let region: RingRegion | null = ring.tryAlloc(length, priority);
  let raise: ((priority: number) => void) | null = null;
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
    else finish({ ok: true, region, ringAt: now(), priority });
  };

  if (region === null) {
    res.pause();
    staged = [];
    const claim = ring.claim(length, priority, options.deadlineMs);
    if (options.classify) raise = claim.raise;
    claim.region.then((r) => {
      raise = null;
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
      if (region === null && raise !== null && received === length) {
        // The whole body is here while it waits for room: its own priority decides its place.
        const named = options.classify!(staged!.length === 1 ? staged![0] : Buffer.concat(staged!));
        if (named > priority) {
          priority = named;
          raise(named);
        }
      }
      settleIfComplete();
    }
  });

  return {
    abort() {
      finish({ ok: false, reason: "aborted" });
    },
  };
}

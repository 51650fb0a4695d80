/**
 * Per-key rate limits: a token bucket in events per second.
 *
 * The front thread never parses bodies, so it cannot know a request's event count before a worker has
 * read it. The bucket is therefore charged after the fact (accepted + rejected records, at least 1 per
 * request) and may go negative: that debt is what throttles the key. While a key's bucket is negative
 * its next HTTP requests get 429 with Retry-After (the seconds until the bucket is back at zero), and its
 * WebSocket acks are held until then (the ack window then stops the producer without closing anything).
 * A single request larger than the burst is therefore let through once and paid back afterwards.
 */
import { now } from "../shared/clock";

export class TokenBucket {
  /** Tokens (events) available; negative while the key owes for work already done. */
  private tokens: number;
  private last: number;

  constructor(
    /** Events per second refilled. */
    public rate: number,
    /** Most tokens the bucket holds: the events a key may send at once after being idle. */
    public burst: number,
    t = now(),
  ) {
    this.tokens = burst;
    this.last = t;
  }

  private refill(t: number): void {
    if (t > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) * this.rate) / 1000);
      this.last = t;
    }
  }

  /** Milliseconds until the bucket is non-negative again; 0 when the key may proceed now. */
  waitMs(t = now()): number {
    this.refill(t);
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.rate);
  }

  /** Takes `events` tokens (the cost of work already done), possibly going into debt. */
  charge(events: number, t = now()): void {
    this.refill(t);
    this.tokens -= events;
  }

  /** New limits from a reloaded keys file; the current level (and any debt) carries over. */
  reconfigure(rate: number, burst: number): void {
    this.refill(now());
    this.rate = rate;
    this.burst = burst;
    if (this.tokens > burst) this.tokens = burst;
  }

  /** For tests and diagnostics. */
  level(t = now()): number {
    this.refill(t);
    return this.tokens;
  }
}

/** Seconds for a Retry-After header: whole seconds, at least 1 (RFC 9110 delay-seconds). */
export function retryAfterSeconds(waitMs: number): number {
  return Math.max(1, Math.ceil(waitMs / 1000));
}

/**
 * Buckets by key id, so a SIGHUP reload keeps each surviving key's level: reloading must not hand every
 * producer a fresh burst, nor forgive its debt.
 */
export class RateLimiter {
  private buckets = new Map<string, TokenBucket>();

  /**
   * The bucket for a key with this limit (null: unlimited). Called at load and reload only; keys that are
   * no longer listed are dropped with `retain`.
   */
  bucketFor(id: string, rate: number | null, burst: number | null): TokenBucket | null {
    if (rate === null) {
      this.buckets.delete(id);
      return null;
    }
    const size = burst ?? rate; // default burst: one second of rate
    const existing = this.buckets.get(id);
    if (existing) {
      existing.reconfigure(rate, size);
      return existing;
    }
    const bucket = new TokenBucket(rate, size);
    this.buckets.set(id, bucket);
    return bucket;
  }

  /** Forgets the buckets of keys not in `ids` (removed by a reload). */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.buckets.keys()) if (!ids.has(id)) this.buckets.delete(id);
  }
}

/** What a request or frame costs once its outcome is known: its records, and at least 1. */
export function eventCost(outcome: { kind: string; received: number } | null): number {
  if (outcome === null) return 1;
  // Nothing was processed when the database was down or the worker failed: not the producer's doing.
  if (outcome.kind === "db_unavailable" || outcome.kind === "failed") return 0;
  return Math.max(1, outcome.received);
}

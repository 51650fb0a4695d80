/**
 * The ring's admission by priority (docs/architecture.md#priority), on the Ring itself: the reserve only work of
 * priority above 0 may use, waiters served highest priority first, no allocation taking room a
 * higher-priority waiter waits for, a waiter raised once its priority is known, deadlines.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Ring, type RingRegion } from "../src/front/ring";

/** 1000 bytes: one general shard of 800, a reserve of 200 (offsets 800..999). */
const ring = () => new Ring({ bytes: 1000, shards: 1, reserveBytes: 200 });
const inReserve = (r: RingRegion | null) => r !== null && r.offset >= 800;
const HOUR = 3_600_000;

describe("Ring: priority at admission", () => {
  test("the reserve is for priority above 0 only, and is used once the general shards are full", () => {
    const r = ring();
    assert.equal(r.capacity, 1000);
    assert.equal(r.reserveCapacity, 200);
    assert.equal(r.maxRegion, 800);
    const a = r.tryAlloc(300, 5);
    assert.ok(a !== null && !inReserve(a), "priority work takes general room while there is some");
    const b = r.tryAlloc(500, 0);
    assert.ok(b !== null && !inReserve(b));
    assert.equal(r.tryAlloc(100, 0), null, "priority 0: the general shard is full, the reserve is not for it");
    const c = r.tryAlloc(150, 10);
    assert.ok(inReserve(c), "priority 10 goes to the reserve");
    assert.equal(r.reserveUsed, 150);
    assert.equal(r.tryAlloc(100, 10), null, "the reserve is bounded too");
    for (const x of [a, b, c]) r.free(x!);
    assert.equal(r.used, 0);
    assert.equal(r.reserveUsed, 0);
  });

  test("no reserve: priority changes only the order of waiters", () => {
    const r = new Ring({ bytes: 1000, shards: 2 });
    assert.equal(r.reserveCapacity, 0);
    assert.ok(r.tryAlloc(500, 0) && r.tryAlloc(500, 0));
    assert.equal(r.tryAlloc(10, 10), null);
  });

  test("waiters are served highest priority first, arrival order within a priority", async () => {
    const r = ring();
    const full = r.tryAlloc(800, 0)!;
    const served: string[] = [];
    const wait = (name: string, length: number, priority: number) =>
      r.alloc(length, priority, HOUR).then((region) => {
        served.push(name);
        return region!;
      });
    // Larger than the reserve, so the priority ones wait for the general shard like the others.
    const [p0a, p3a, p0b, p3b] = [wait("p0-a", 250, 0), wait("p3-a", 250, 3), wait("p0-b", 250, 0), wait("p3-b", 250, 3)];
    assert.equal(r.waiting, 4);
    r.free(full);
    const regions = await Promise.all([p3a, p3b, p0a]);
    assert.deepEqual(served, ["p3-a", "p3-b", "p0-a"]);
    assert.equal(r.waiting, 1, "p0-b still waits: 750 of 800 in use");
    r.free(regions[0]);
    r.free(await p0b);
    assert.deepEqual(served, ["p3-a", "p3-b", "p0-a", "p0-b"]);
  });

  test("an allocation does not take room that a waiter of higher priority waits for", async () => {
    const r = ring();
    const x = r.tryAlloc(400, 0)!;
    const y = r.tryAlloc(400, 0)!;
    const big = r.alloc(500, 5, HOUR); // more than the reserve: waits for the general shard
    r.free(x);
    assert.equal(r.tryAlloc(100, 0), null, "priority 0 cannot take the 400 bytes freed while priority 5 waits for 500");
    const small = r.alloc(100, 0, HOUR);
    assert.equal(r.waiting, 2, "it waits behind");
    r.free(y);
    const region = await big;
    assert.ok(region !== null && region.length === 500 && !inReserve(region));
    assert.ok((await small) !== null);
    assert.equal(r.waiting, 0);
  });

  test("a waiter raised to priority above 0 is served at once from the reserve", async () => {
    const r = ring();
    const full = r.tryAlloc(800, 0)!;
    const first = r.claim(100, 0, HOUR);
    const second = r.claim(100, 0, HOUR);
    let settled = false;
    void second.region.then(() => (settled = true));
    second.raise(0);
    second.raise(7);
    const region = await second.region;
    assert.ok(inReserve(region), "raised past the priority-0 waiter ahead of it, into the reserve");
    assert.ok(settled);
    assert.equal(r.waiting, 1, "the other still waits");
    first.raise(-1); // never down
    assert.equal(r.waiting, 1);
    r.free(full);
    assert.ok(!inReserve(await first.region));
  });

  test("past its deadline a waiter resolves null, and the smaller waiters it held back are served", async () => {
    const r = ring();
    assert.ok(r.tryAlloc(500, 0));
    const head = r.alloc(700, 0, 20);
    const behind = r.alloc(200, 0, HOUR);
    assert.equal(r.waiting, 2);
    assert.equal(await head, null);
    const region = await behind;
    assert.ok(region !== null && !inReserve(region));
    assert.equal(r.waiting, 0);
  });
});

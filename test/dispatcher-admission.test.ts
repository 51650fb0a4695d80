/**
 * The dispatcher's admission to the workers by priority (docs/architecture.md#priority), on its bookkeeping alone
 * (WorkerAdmission, no worker pool): a byte budget per priority level counting the work of that priority
 * and above, all levels under twice the budget, FIFO within a level.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { WorkerAdmission } from "../src/front/dispatcher";

/** One worker, a budget of 100; `started` lists what was admitted from the queue, in order. */
function admission(workers = 1, budget = 100) {
  const started: string[] = [];
  const a = new WorkerAdmission<{ name: string; cost: number }>(workers, budget, (item) => started.push(item.name));
  /** Starts now (returns true) or queues `name`. */
  const offer = (name: string, priority: number, cost: number) => {
    if (a.tryStart(priority, cost)) return true;
    a.enqueue({ name, cost }, priority);
    return false;
  };
  return { a, started, offer };
}

describe("WorkerAdmission: the workers' byte budget by priority", () => {
  test("one priority: admitted while the budget has room, or while fewer tasks than workers run; then in arrival order", () => {
    const { a, started, offer } = admission();
    assert.equal(offer("big", 0, 500), true, "a body larger than the budget still gets the idle worker");
    assert.equal(offer("x", 0, 10), false);
    a.done(0, 500);
    assert.deepEqual(started, ["x"]);
    assert.equal(offer("y", 0, 80), true);
    assert.equal(offer("z", 0, 20), false, "10 + 80 + 20 > 100");
    assert.equal(offer("w", 0, 1), false, "behind z, though it would fit");
    assert.equal(a.waiting, 2);
    a.done(0, 10);
    assert.deepEqual(started, ["x", "z"], "80 + 20 fits; w (1 more) does not");
    assert.equal(a.bytes, 100);
    a.done(0, 80);
    assert.deepEqual(started, ["x", "z", "w"]);
    assert.equal(a.bytes, 21);
    assert.equal(a.waiting, 0);
  });

  test("priority 10 is admitted while priority-0 work fills the budget, and priority 0 waits behind it", () => {
    const { a, started, offer } = admission();
    for (let i = 0; i < 10; i++) assert.equal(offer(`low${i}`, 0, 10), true);
    assert.equal(offer("low10", 0, 10), false, "the budget is full");
    for (let i = 0; i < 5; i++) assert.equal(offer(`high${i}`, 10, 10), true, "counted against work of priority >= 10 only");
    assert.equal(a.waiting, 1);
    assert.equal(a.bytes, 150);
    a.done(0, 10);
    assert.deepEqual(started, [], "priority 0 still finds 140 of priority >= 0 in the workers");
    for (let i = 0; i < 5; i++) a.done(10, 10);
    assert.deepEqual(started, ["low10"]);
  });

  test("a waiting task that does not fit its level's budget does not hold back lower levels, whose work it does not wait for", () => {
    const { a, started, offer } = admission();
    assert.equal(offer("p0-x", 0, 1), true);
    assert.equal(offer("p5-a", 5, 89), true);
    assert.equal(offer("p5-b", 5, 20), false, "89 + 20 > 100 at priority >= 5");
    assert.equal(offer("p0-a", 0, 5), false, "a higher level is waiting");
    a.done(0, 1);
    assert.deepEqual(started, ["p0-a"], "priority 0 fits (94 of 100) without delaying p5-b, which waits for priority >= 5 work");
    a.done(5, 89);
    assert.deepEqual(started, ["p0-a", "p5-b"]);
  });

  test("all levels together stay under twice the budget; at the cap the highest waiting task takes the next room", () => {
    const { a, started, offer } = admission();
    assert.equal(offer("p0", 0, 100), true);
    assert.equal(offer("p5", 5, 100), true);
    assert.equal(a.bytes, 200);
    assert.equal(offer("p10", 10, 10), false, "its own level is empty, but 210 > 2 × 100");
    assert.equal(offer("p5-b", 5, 10), false);
    assert.equal(offer("p0-b", 0, 10), false);
    a.done(0, 100);
    assert.deepEqual(started, ["p10"], "p5-b's level is full (100 + 10 > 100 at >= 5); p0-b's too (110 + 10 > 100)");
    a.done(5, 100);
    assert.deepEqual(started, ["p10", "p5-b", "p0-b"]);
  });

  test("priorities are clamped to 0..10", () => {
    assert.equal(WorkerAdmission.level(-3), 0);
    assert.equal(WorkerAdmission.level(12), 10);
    assert.equal(WorkerAdmission.level(7.9), 7);
    assert.equal(WorkerAdmission.level(Number.NaN), 0);
  });
});

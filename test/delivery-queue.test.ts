/**
 * session/queue.ts: a session's queue taken off its front one at a time (a PUBACK each) while
 * new deliveries are pushed, across the trims of its used front, keeps every item once and in
 * order; get/some/map/iteration see only what is queued.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import v8 from 'node:v8';
import { DeliveryQueue } from '../src/session/queue.js';
import { v8Gc } from './helpers/v8-gc.js';

test('FIFO order and length across front trims, with shift, drop and replace', () => {
  const q = new DeliveryQueue<number>();
  const model: number[] = [];
  let next = 0;
  for (let round = 0; round < 5000; round++) {
    const add = (round * 7) % 5;
    for (let k = 0; k < add; k++) {
      q.push(next);
      model.push(next++);
    }
    if (round % 3 === 0 && model.length > 0) assert.equal(q.shift(), model.shift());
    else if (model.length > 2) {
      q.drop(2);
      model.splice(0, 2);
    }
    assert.equal(q.length, model.length);
    if (model.length > 0) {
      assert.equal(q.get(0), model[0]);
      assert.equal(q.get(model.length - 1), model[model.length - 1]);
    }
  }
  assert.deepEqual([...q], model);
  assert.deepEqual(
    q.map((x) => x * 2),
    model.map((x) => x * 2),
  );
  assert.equal(
    q.some((x) => x === model[0]),
    true,
  );
  while (q.length > 0) assert.equal(q.shift(), model.shift());
  assert.equal(q.shift(), undefined);
  assert.equal(
    q.some(() => true),
    false,
  );
  q.replace([1, 2, 3]);
  assert.deepEqual([...q], [1, 2, 3]);
});

/**
 * A long-lived queue (moved to the old generation by full GCs) churned as fan-in's subscriber
 * churns it (one push and one shift per message, ≈ `window` queued), each delivery holding
 * 1 KiB of young memory: after the last shift, what scavenges have kept alive is what dead
 * copies of the queue's array still point to.
 */
function retainedAfterShift(window: number): number {
  const gc = v8Gc();
  const q = new DeliveryQueue<unknown>();
  for (let k = 0; k < window; k++) q.push({ small: k });
  gc();
  gc(); // the queue and its array are old now
  for (let n = 0; n < 20000; n++) {
    q.push({ held: new Array(128).fill(n) });
    q.shift();
  }
  while (q.length > 0) q.shift();
  gc({ type: 'minor' });
  gc({ type: 'minor' });
  const before = v8.getHeapStatistics().used_heap_size;
  gc(); // frees what the scavenges kept
  return before - v8.getHeapStatistics().used_heap_size;
}

test('deliveries shifted off the queue are not kept alive through scavenges', () => {
  for (const window of [100, 1000, 2000, 5000]) {
    const kept = retainedAfterShift(window);
    assert.ok(
      kept < 4 << 20,
      `window ${window}: scavenges kept ${(kept / 1048576).toFixed(1)} MiB of shifted deliveries`,
    );
  }
});

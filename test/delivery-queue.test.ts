/**
 * session/queue.ts: a session's queue taken off its front one at a time (a PUBACK each) while
 * new deliveries are pushed, across the trims of its used front, keeps every item once and in
 * order; get/some/map/iteration see only what is queued.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeliveryQueue } from '../src/session/queue.js';

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

import assert from 'node:assert/strict';
import { test } from 'node:test';
import v8 from 'node:v8';
import { InflightTable } from '../src/session/inflight.js';
import { v8Gc } from './helpers/v8-gc.js';

// A session's inflight deliveries (src/session/inflight.ts): a Map's subset, and no dead copy of
// its table keeps deliveries alive through scavenges (docs/PERFORMANCE.md, cluster, "Sixth stop").

test('InflightTable: get, set, has, delete and size as a Map, iterated in insertion order', () => {
  const t = new InflightTable<string>();
  assert.equal(t.size, 0);
  for (let id = 1; id <= 40; id++) t.set(id, `m${id}`);
  assert.equal(t.size, 40);
  assert.equal(t.get(7), 'm7');
  assert.equal(t.get(41), undefined);
  assert.ok(t.has(40) && !t.has(0));
  assert.ok(t.delete(7));
  assert.ok(!t.delete(7));
  assert.ok(!t.has(7));
  assert.equal(t.get(7), undefined);
  t.set(3, 'again'); // an existing id keeps its place
  t.set(7, 'm7b'); // a new one goes last (into the freed slot)
  t.set(100, 'm100');
  assert.equal(t.size, 41);
  const ids = [...t].map(([id]) => id);
  assert.deepEqual(ids, [...[...Array(40).keys()].map((i) => i + 1).filter((i) => i !== 7), 7, 100]);
  assert.equal([...t][2][1], 'again');
  assert.deepEqual([...t.values()].slice(-2), ['m7b', 'm100']);
  assert.deepEqual([...t.keys()].slice(0, 3), [1, 2, 3]);
  for (const id of ids) t.delete(id);
  assert.equal(t.size, 0);
  assert.deepEqual([...t], []);
});

/**
 * A long-lived table (moved to the old generation by full GCs) churned the way a window of
 * sends and acks churns it, each delivery holding 1 KiB of young memory: after the last delete,
 * what scavenges have kept alive is what dead copies of the table still point to.
 */
function retainedAfterDelete(t: { set(k: number, v: unknown): unknown; delete(k: number): unknown }): number {
  const gc = v8Gc();
  const window = 16;
  let id = 0;
  for (; id < window; id++) t.set(id, { small: id });
  gc();
  gc(); // the table is old now
  for (let n = 0; n < 20000; n++, id++) {
    t.set(id, { held: new Array(128).fill(n) });
    t.delete(id - window);
  }
  for (let k = id - window; k < id; k++) t.delete(k);
  gc({ type: 'minor' });
  gc({ type: 'minor' });
  const before = v8.getHeapStatistics().used_heap_size;
  gc(); // frees what the scavenges kept
  return before - v8.getHeapStatistics().used_heap_size;
}

test('deliveries deleted from the table are not kept alive through scavenges', () => {
  // 20,000 deliveries of 1 KiB went through; a Map<number, delivery> here kept 22 MiB of them
  // (its dead tables, allocated in the old generation once the Map is there, point to them).
  const kept = retainedAfterDelete(new InflightTable<unknown>());
  assert.ok(kept < 4 << 20, `scavenges kept ${(kept / 1048576).toFixed(1)} MiB of deleted deliveries`);
});

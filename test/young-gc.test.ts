import assert from 'node:assert/strict';
import { test } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { YoungGc } from '../src/cluster/young-gc.js';

// The cluster thread scavenges after every few MiB of buffers it takes in (young-gc.ts), so that
// V8 frees them with a scavenge instead of a full mark-compact (docs/PERFORMANCE.md, cluster,
// "Fifth stop").

test('YoungGc runs a scavenge once per everyBytes taken in', () => {
  const calls: unknown[] = [];
  const g = new YoungGc(1000, (o) => calls.push(o));
  g.add(400);
  g.add(500);
  assert.equal(calls.length, 0);
  g.add(100);
  assert.deepEqual(calls, [{ type: 'minor' }]);
  g.add(999);
  assert.equal(calls.length, 1);
  g.add(1);
  assert.equal(calls.length, 2);
  assert.equal(g.runs, 2);
});

test("YoungGc gets V8's gc on this runtime, and leaves no gc() in contexts made afterwards", () => {
  const g = new YoungGc(1);
  g.add(1);
  assert.equal(g.runs, 1, 'no gc function: the cluster thread would run mark-compacts again');
  if (typeof (globalThis as { gc?: unknown }).gc !== 'function')
    assert.equal(vm.runInNewContext('typeof gc'), 'undefined');
});

test('its scavenge gives back the external memory of dropped young ArrayBuffers', async () => {
  const g = new YoungGc(1);
  g.add(1); // start from a scavenged young generation
  const before = v8.getHeapStatistics().external_memory;
  for (let i = 0; i < 128; i++) new Uint8Array(new ArrayBuffer(64 * 1024))[0] = i; // 8 MiB, dropped
  const grown = v8.getHeapStatistics().external_memory;
  assert.ok(grown - before >= 7 << 20, `external grew by ${grown - before}`);
  g.add(1);
  // Freed by V8's array buffer sweeper after the scavenge (possibly on another thread).
  let now = v8.getHeapStatistics().external_memory;
  const deadline = Date.now() + 5000; // the sweeper may run on a busy helper thread
  while (now - before >= 4 << 20 && Date.now() < deadline) {
    await new Promise((r) => setImmediate(r));
    now = v8.getHeapStatistics().external_memory;
  }
  assert.ok(now - before < 4 << 20, `still ${now - before} bytes over the start after the scavenge`);
});

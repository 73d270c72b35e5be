/**
 * storage/pending-writes.ts, held writes (durability.online_ack_wait) under churn: thousands of
 * deliveries held, most acknowledged in time, the others released into flushes, while its queue
 * of held writes is compacted. Every publisher ack waiting for one is settled exactly once. (The
 * first version compacted the queue inside release()'s loop over it and threw.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { InflightEntry } from '../src/session/session.js';
import type { HeldAck } from '../src/shard/held-ack.js';
import { PendingWrites } from '../src/storage/pending-writes.js';
import type { DurableStore } from '../src/storage/types.js';

test('held deliveries: acknowledged ones never written, the others written once, every waiting ack settled once', () => {
  const w = new PendingWrites(5);
  let puts = 0;
  let deletes = 0;
  const store = {
    putDelivery: () => void puts++,
    deleteDelivery: () => void deletes++,
    putMark: () => {},
  } as unknown as DurableStore;
  const acks: { parts: number }[] = [];
  const live: InflightEntry[] = [];
  let seq = 1;
  const parts: HeldAck[] = [];
  let acked = 0;
  for (let round = 0; round < 20_000; round++) {
    for (let k = 0; k < 5; k++) {
      const e = { seq: seq++, qos: 1, msg: {}, w: null, stored: false } as unknown as InflightEntry;
      const t = {
        parts: 1,
        partDone() {
          if (--this.parts < 0) throw new Error('settled twice');
        },
      };
      acks.push(t);
      live.push(e);
      w.putDelivery(`c${e.seq % 3}`, e, 0, false, t as unknown as HeldAck, true, null);
    }
    while (live.length > 40) {
      const e = live.shift()!;
      w.removeDelivery(`c${e.seq % 3}`, e);
      acked++;
    }
    if (round % 7 === 0) {
      // Some of the held ones are due.
      w.release(Date.now() + (round % 3), false);
      w.flush(store, 0, parts);
      w.nextDue();
    }
  }
  w.release(0, true);
  w.flush(store, 0, parts);
  for (const t of parts) t.partDone();
  for (const t of acks) assert.equal(t.parts, 0);
  assert.equal(w.heldCount, 0);
  assert.equal(w.heldAcked + w.heldWritten, seq - 1, 'each held delivery acknowledged or written');
  assert.equal(puts, w.heldWritten);
  assert.ok(w.heldAcked > 0 && w.heldWritten > 0);
  assert.ok(deletes <= acked);
});

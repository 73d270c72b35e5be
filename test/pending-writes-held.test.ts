/**
 * storage/pending-writes.ts, held writes (durability.online_ack_wait) under churn: thousands of
 * deliveries held, most acknowledged in time, the others released into flushes, while its queue
 * of held writes is compacted. Every publisher ack waiting for one is settled exactly once. (The
 * first version compacted the queue inside release()'s loop over it and threw.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Message } from '../src/session/message.js';
import { type InflightEntry, newDelivery, Session } from '../src/session/session.js';
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

/** A store that records what a flush writes. */
function recordingStore() {
  const ops: string[] = [];
  const store = {
    putDelivery: (c: string, seq: number, d: { i: number }) => void ops.push(`put ${c} ${seq} i=${d.i}`),
    deleteDelivery: (c: string, seq: number) => void ops.push(`del ${c} ${seq}`),
    deleteSession: (c: string) => void ops.push(`gone ${c}`),
    putSession: () => {},
    putMark: () => {},
  } as unknown as DurableStore;
  return { ops, store };
}

function ackCounter() {
  return {
    parts: 1,
    partDone() {
      if (--this.parts < 0) throw new Error('settled twice');
    },
  };
}

function delivery(seq: number, stored = false): InflightEntry {
  return newDelivery(
    Message.fromStrings('t', Buffer.from('x'), 1, false, 'p'),
    1,
    false,
    null,
    null,
    seq,
    false,
    stored,
  ) as InflightEntry;
}

test('a stored (restored) delivery is not held: its new state is written at the next flush, its ack removes it', () => {
  const w = new PendingWrites(1000);
  const { ops, store } = recordingStore();
  const e = delivery(7, true);
  w.putDelivery('c', e, 3, false, null, true, null);
  assert.equal(w.heldCount, 0, 'only the first write of a delivery is held');
  w.flush(store, 0, []);
  assert.deepEqual(ops, ['put c 7 i=3']);
  w.removeDelivery('c', e);
  w.flush(store, 0, []);
  assert.deepEqual(ops, ['put c 7 i=3', 'del c 7']);
  assert.equal(e.stored, false);
  assert.equal(e.w, null);
});

/** Pending writes, a recording store, one delivery and an ack waiting for it. */
function setup(holdMs: number, seq: number) {
  return { w: new PendingWrites(holdMs), ...recordingStore(), e: delivery(seq), t: ackCounter() };
}

test('a delivery queued offline (pending) and then sent with hold: one write with its packet id, not held', () => {
  const { w, ops, store, e, t } = setup(1000, 8);
  w.putDelivery('c', e, 0, false, t as unknown as HeldAck, false, null);
  w.putDelivery('c', e, 5, false, null, true, null);
  assert.equal(w.heldCount, 0);
  const parts: HeldAck[] = [];
  w.flush(store, 0, parts);
  assert.deepEqual(ops, ['put c 8 i=5']);
  assert.equal(parts.length, 1, 'the publisher ack waits for this record');
  assert.equal(e.stored, true);
});

test('acknowledged before its flush (not held): neither put nor remove, its ack is free at once', () => {
  const { w, ops, store, e, t } = setup(0, 9);
  w.putDelivery('c', e, 4, false, t as unknown as HeldAck, true, null);
  w.removeDelivery('c', e);
  assert.equal(t.parts, 0);
  w.flush(store, 0, []);
  assert.deepEqual(ops, []);
  assert.equal(w.skipped, 2);
});

test('a session gone with held and pending deliveries: none of them written, each waiting ack settled once', () => {
  const w = new PendingWrites(1000);
  const { ops, store } = recordingStore();
  const session = new Session('c', false);
  session.expiryInterval = 60;
  const held = delivery(10);
  const pending = delivery(11);
  const stored = delivery(12, true);
  session.inflight.set(1, held);
  session.queue.push(pending);
  session.queue.push(stored);
  const t1 = ackCounter();
  const t2 = ackCounter();
  w.putDelivery('c', held, 1, false, t1 as unknown as HeldAck, true, null);
  w.putDelivery('c', pending, 0, false, t2 as unknown as HeldAck, false, null);
  w.removeDelivery('c', stored);
  assert.equal(w.heldCount, 1);
  w.sessionGone(session);
  assert.equal(t1.parts, 0);
  assert.equal(t2.parts, 0);
  assert.equal(w.heldCount, 0);
  const parts: HeldAck[] = [];
  w.release(0, true);
  w.flush(store, 0, parts);
  // The session's records go with deleteSession; nothing of it is written after that.
  assert.deepEqual(ops, ['gone c']);
  assert.equal(parts.length, 0);
  for (const e of [held, pending, stored]) assert.equal(e.w, null);
});

/**
 * Sync mode's write path (docs/DURABILITY.md, "How a shard writes"): a QoS 1 delivery to an
 * online persistent subscriber that acknowledges it before the shard flushes is never written,
 * and the publisher's PUBACK then waits for no commit; one the subscriber has not acknowledged
 * is written and committed before the publisher's PUBACK. Real broker, real sockets.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Inbox, idOnShard, publish, startBroker, subscribe, waitFor } from './helpers/broker.js';
import { client } from './helpers/mqttjs.js';
import { PacketClient } from './helpers/raw.js';

test('sync: deliveries acknowledged before the flush are neither put nor removed; unacknowledged ones are committed before the PUBACK', async (t) => {
  // A long delay: the subscriber's PUBACKs surely come first; the publisher's PUBACKs then
  // cannot have waited for a flush (it would come 1 s later, after the test's own deadline).
  const broker = await startBroker(t, { 'durability.mode': 'sync', 'durability.sync_delay': 1000 });
  // Publisher and subscribers on one shard: no outbox (a cross-shard batch waits for its commit).
  const sub = await client(t, broker, { clientId: idOnShard(broker, 0, 'dw-sub'), clean: false });
  await subscribe(sub, 'dw/fast', 1);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'dw-pub') });
  const before = broker.counters.snapshot();
  const started = Date.now();
  await Promise.all(Array.from({ length: 20 }, (_, i) => publish(pub, 'dw/fast', `m${i}`, { qos: 1 })));
  assert.ok(Date.now() - started < 1000, 'acked on the subscriber’s PUBACKs, not after the flush');
  // Counted at the next flush (after the delay).
  const skipped = (): number => broker.counters.snapshot().storeWritesSkipped - before.storeWritesSkipped;
  await waitFor(() => skipped() >= 40, 'the skipped writes counted');
  const after = broker.counters.snapshot();
  assert.equal(skipped(), 40, '20 puts and 20 removes never made');
  assert.equal(after.storeWrites, before.storeWrites + 0, 'no delivery record written');

  // A subscriber that never acknowledges: the publisher's PUBACK [MQTT-4.3.2-?] follows the
  // commit of the delivery record (after the 1 s delay: a store commit is counted first).
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'dw-silent'), { clean: false });
  await pc.subscribe('dw/slow', 1);
  const commits = broker.counters.snapshot().storeCommits;
  await publish(pub, 'dw/slow', 'kept', { qos: 1 });
  const p = await pc.expect('publish');
  assert.equal(String(p.payload), 'kept');
  assert.ok(broker.counters.snapshot().storeCommits > commits, 'the PUBACK came after a commit');
  await waitFor(() => broker.counters.snapshot().storeWrites > after.storeWrites, 'the delivery written');
});

test('sync: QoS 1 batches to a shard with no persistent session go without an outbox record; once it has one, they are stored before the PUBACK', async (t) => {
  // Outbox entries written at the next flush (not held for the receiver's confirmation, as by
  // default: the next test).
  const broker = await startBroker(t, { 'durability.mode': 'sync', 'durability.online_ack_wait': 0 });
  const snap = () => broker.counters.snapshot();
  // A clean subscriber on shard 1, the publisher on shard 0: every message crosses shards.
  const sub = await client(t, broker, { clientId: idOnShard(broker, 1, 'obs-clean') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'obs/x', 1);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'obs-pub') });
  const before = snap();
  await Promise.all(Array.from({ length: 20 }, (_, i) => publish(pub, 'obs/x', `m${i}`, { qos: 1 })));
  await inbox.wait(20);
  const mid = snap();
  assert.ok(mid.outboxSkipped > before.outboxSkipped, 'batches sent without an outbox record');
  assert.equal(mid.storeWrites, before.storeWrites, 'nothing written: no outbox put or remove, no mark');

  // A persistent session on shard 1, subscribed to another topic: batches to shard 1 are stored
  // from now on (its subscriptions may match later), and the PUBACK waits for that commit.
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'obs-persistent'), {
    clean: false,
  });
  await pc.subscribe('obs/other', 1);
  await waitFor(() => snap().storeWrites > mid.storeWrites, 'its session record written');
  const w = snap();
  await publish(pub, 'obs/x', 'stored', { qos: 1 });
  await inbox.wait(21);
  assert.equal(snap().outboxSkipped, w.outboxSkipped, 'this batch went to the outbox');
  // The receiver's mark, and the outbox put — written at our next flush, or, when the receiver
  // committed its mark and confirmed before that flush came (its turn was late, or a commit was
  // still in flight), dropped with its remove unwritten (2 skipped writes). The likely cause of
  // one timeout in a loaded full run (read from the code; that run printed no counters).
  const stored = () => {
    const n = snap();
    const written = n.storeWrites - w.storeWrites;
    return written >= 2 || (written >= 1 && n.storeWritesSkipped - w.storeWritesSkipped >= 2);
  };
  await waitFor(stored, 'the outbox entry (or its confirmation) and the mark written').catch((err) => {
    // Which counters moved, to tell why.
    const now = snap() as unknown as Record<string, number>;
    const then = w as unknown as Record<string, number>;
    const moved: Record<string, number> = {};
    for (const k of Object.keys(now)) if (now[k] !== then[k]) moved[k] = now[k] - then[k];
    console.log(`counters moved since the session was written: ${JSON.stringify(moved)}`);
    throw err;
  });
  assert.ok(snap().storeCommits > w.storeCommits);
});

test('sync, online_ack_wait (default): a batch the receiving shard stores nothing for is confirmed at once; the outbox entry held for that confirmation is never written', async (t) => {
  const broker = await startBroker(t, { 'durability.mode': 'sync' });
  const snap = () => broker.counters.snapshot();
  // A persistent session on shard 1 subscribed to another topic, a clean subscriber there, the
  // publisher on shard 0: batches to shard 1 go to the outbox, held for the confirmation; shard
  // 1 stores nothing for them (the clean session's delivery needs no record), so it confirms
  // without a commit, and the PUBACK waits for neither shard's commit.
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'obh-persistent'), {
    clean: false,
  });
  await pc.subscribe('obh/other', 1);
  const sub = await client(t, broker, { clientId: idOnShard(broker, 1, 'obh-clean') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'obh/x', 1);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'obh-pub') });
  await waitFor(() => snap().storeWrites > 0, 'the session record written');
  const w = snap();
  await publish(pub, 'obh/x', 'held', { qos: 1 });
  await inbox.wait(1);
  const s = snap();
  assert.equal(s.outboxSkipped, w.outboxSkipped, 'this batch went to the outbox');
  assert.equal(s.outboxConfirmedUnwritten, w.outboxConfirmedUnwritten + 1, 'confirmed without a commit');
  assert.equal(s.outboxHeldConfirmed, w.outboxHeldConfirmed + 1, 'the held entry confirmed first');
  assert.equal(s.storeWrites, w.storeWrites, 'nothing written: no outbox put or remove, no mark');
  assert.equal(s.storeCommits, w.storeCommits, 'no commit before the PUBACK');
  assert.equal(s.storeWritesSkipped, w.storeWritesSkipped + 2);

  // The persistent session subscribes to it too and stays connected without acknowledging:
  // its delivery is held, then written; the batch is confirmed after that commit (with its mark).
  await pc.subscribe('obh/x', 1);
  const w2 = snap();
  await publish(pub, 'obh/x', 'kept', { qos: 1 });
  assert.equal(String((await pc.expect('publish')).payload), 'kept');
  assert.ok(snap().storeCommits > w2.storeCommits, 'a commit before the PUBACK');
  assert.ok(snap().storeWrites >= w2.storeWrites + 1, 'the held delivery (or the outbox entry) written');
});

/**
 * Flow control: a slow consumer never stalls the others. Beyond `mqtt.output_high_watermark`
 * bytes buffered for a connection, QoS 0 to it is dropped (and counted) and QoS 1/2 goes to its
 * session queue (bounded by `mqtt.max_mqueue_len`) instead of the socket. Everything here is
 * count-based: the test waits for the broker's counters and for messages, never for time.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  clientWithInbox,
  idOnShard,
  PacketClient,
  publish,
  startBroker,
  subscribe,
  waitFor,
} from './helpers/broker.js';

const KIB = Buffer.alloc(1024, 'x');

test('slow consumer: QoS 0 dropped and counted, QoS 1 queued (bounded), other subscribers get everything', async (t) => {
  const queueLen = 10;
  const broker = await startBroker(t, {
    'mqtt.output_high_watermark': 1024,
    'mqtt.max_mqueue_len': queueLen,
  });
  const topic = 'flow/t';
  // The slow consumer on shard 0; normal subscribers on both shards; the publisher on shard 1.
  const slow = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'slow'));
  await slow.pc.subscribe(topic, 1);
  const normals = [
    await clientWithInbox(t, broker, { clientId: idOnShard(broker, 0, 'normal') }),
    await clientWithInbox(t, broker, { clientId: idOnShard(broker, 1, 'normal') }),
  ];
  for (const n of normals) await subscribe(n.c, topic, 1);
  const pub = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 1, 'fast-pub') });

  // The slow consumer stops reading: first its kernel buffers fill up, then the broker's
  // output buffer for it grows past the high-water mark.
  slow.pc.socket.pause();

  // Phase 1: QoS 0 in rounds until the broker reports drops for the slow consumer. Each round
  // waits until the normal subscribers have it all (the test's own pace, not a timer).
  const round = 64;
  let sent0 = 0;
  const counters = () => broker.counters.snapshot();
  let extraRounds = 3; // keep going a little after the first drop
  for (let r = 0; extraRounds > 0; r++) {
    assert.ok(r < 2000, `no drops after ${sent0} KiB`);
    for (let i = 0; i < round; i++) {
      pub.c.publish(topic, KIB, { qos: 0 });
      sent0++;
    }
    for (const n of normals) await n.inbox.wait(sent0);
    if (counters().deliveryDroppedQos0Slow > 0) extraRounds--;
  }
  for (const n of normals) {
    assert.equal(n.inbox.messages.length, sent0, 'a normal subscriber received every QoS 0 message');
  }
  assert.equal(
    counters().deliveryDroppedQos0Slow,
    counters().messagesDropped,
    'only the slow consumer lost messages',
  );

  // Phase 2: QoS 1. The slow consumer's socket is congested, so these go to its session queue,
  // which keeps the newest `queueLen` and counts the rest as dropped.
  const n1 = 30;
  for (let i = 0; i < n1; i++) await publish(pub.c, topic, `q${i}`, { qos: 1 });
  await waitFor(() => counters().deliveryDroppedQueueFull === n1 - queueLen, 'queue-full drops');
  for (const n of normals) {
    const got = await n.inbox.wait(sent0 + n1);
    assert.deepEqual(
      got.slice(sent0).map((m) => m.payload),
      Array.from({ length: n1 }, (_, i) => `q${i}`),
    );
  }

  // The slow consumer reads again: it gets every QoS 0 message that was not dropped, then
  // the queued QoS 1 messages (the newest queueLen, in order).
  const dropped0 = counters().deliveryDroppedQos0Slow;
  slow.pc.socket.resume();
  await waitFor(() => slow.pc.publishes >= sent0 - dropped0 + queueLen, 'slow consumer catching up', 30_000);
  const got = slow.pc.pending.filter((p) => p.cmd === 'publish');
  const qos0 = got.filter((p) => p.qos === 0);
  const qos1 = got.filter((p) => p.qos === 1);
  assert.equal(qos0.length, sent0 - dropped0, 'every QoS 0 message was either sent or counted as dropped');
  assert.deepEqual(
    qos1.map((p) => p.payload.toString()),
    Array.from({ length: queueLen }, (_, i) => `q${n1 - queueLen + i}`),
  );
  assert.equal(counters().deliveryDroppedQueueFull, n1 - queueLen);
});

test('a congested consumer gets its queued QoS 1 messages once it catches up (even below a 16 KiB backlog)', async (t) => {
  const broker = await startBroker(t, { 'mqtt.output_high_watermark': 1024 });
  const topic = 'flow/catchup';
  const slow = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'catchup-slow'));
  await slow.pc.subscribe(topic, 1);
  const normal = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 0, 'catchup-normal') });
  await subscribe(normal.c, topic, 0);
  const pub = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 1, 'catchup-pub') });
  slow.pc.socket.pause();

  // One 12 KiB QoS 0 message per broker turn (paced by the normal subscriber) until the slow
  // consumer is congested: its backlog is then at most one message plus 1 KiB, below Node's
  // default 16 KiB stream buffer, so no write ever reported backpressure on its own.
  const big = Buffer.alloc(12 * 1024, 'y');
  const counters = () => broker.counters.snapshot();
  let sent = 0;
  while (counters().deliveryDroppedQos0Slow === 0) {
    assert.ok(sent < 10_000, 'no congestion');
    pub.c.publish(topic, big, { qos: 0 });
    await normal.inbox.wait(++sent);
  }
  // Congested: QoS 1 goes to the session queue.
  for (let i = 0; i < 3; i++) await publish(pub.c, topic, `late${i}`, { qos: 1 });
  await normal.inbox.wait(sent + 3);
  slow.pc.socket.resume();
  // The queue must move when the backlog is gone, without any further traffic.
  await waitFor(
    () => slow.pc.publishes >= sent - counters().deliveryDroppedQos0Slow + 3,
    'queued messages',
    15_000,
  );
  assert.deepEqual(
    slow.pc.pending
      .filter((p) => p.cmd === 'publish' && p.qos === 1)
      .map((p) => p.cmd === 'publish' && p.payload.toString()),
    ['late0', 'late1', 'late2'],
  );
});

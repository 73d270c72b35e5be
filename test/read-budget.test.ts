/**
 * The per-connection read budget (issue #9, fairness): a connection that has read 64 KiB in one
 * event-loop turn is paused and read again at the turn's end, so one flooding socket cannot hold
 * its shard's turn. Pausing must never lose, reorder or stall input: a 1.8 MiB burst of QoS 1
 * PUBLISHes in one write is read in many budgeted turns, every PUBLISH is acknowledged in order
 * [MQTT-4.6.0-2] and delivered in order [MQTT-4.6.0-3], and each pause is counted.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqttPacket from 'mqtt-packet';
import { Counter } from '../src/metrics/counters.js';
import { READ_BUDGET } from '../src/shard/connection.js';
import {
  clientWithInbox,
  idOnShard,
  rawConnected,
  readFrame,
  startBroker,
  subscribe,
} from './helpers/broker.js';

test('a 1.8 MiB burst on one socket is read in budgeted turns: every PUBLISH acked and delivered, in order, each pause counted', {
  timeout: 120_000,
}, async (t) => {
  const broker = await startBroker(t);
  const topic = 'budget/burst';
  const { c: sub, inbox } = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 0, 'bsub') });
  await subscribe(sub, topic, 1);

  // Fewer than mqtt.max_mqueue_len (1000): a subscriber slower than the burst queues, never drops
  const n = 900;
  const frames: Buffer[] = [];
  for (let i = 1; i <= n; i++) {
    const payload = Buffer.alloc(2048, 'p');
    payload.write(`m${i};`);
    frames.push(
      mqttPacket.generate({
        cmd: 'publish',
        topic,
        payload,
        qos: 1,
        messageId: i,
        dup: false,
        retain: false,
      }),
    );
  }
  const burst = Buffer.concat(frames);
  assert.ok(burst.length > 16 * READ_BUDGET, 'the burst spans many budgets');

  const pubId = idOnShard(broker, 0, 'bpub'); // same shard as the subscriber: one turn loop
  const before = broker.counters.total(Counter.readBudgetYields);
  const pub = await rawConnected(t, broker, { clientId: pubId });
  pub.send(burst);

  for (let i = 1; i <= n; i++) {
    const f = await readFrame(pub);
    assert.equal(f.type, 4, `PUBACK for ${i}`);
    assert.equal(f.body.readUInt16BE(0), i, 'PUBACKs in PUBLISH order');
  }
  const got = await inbox.wait(n);
  assert.equal(got.length, n);
  for (let i = 0; i < n; i++) assert.ok(got[i].payload.startsWith(`m${i + 1};`), `message ${i + 1} in order`);

  const yields = broker.counters.total(Counter.readBudgetYields) - before;
  assert.ok(yields >= 1, `the publisher was paused by its read budget (${yields} yields)`);
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { client, Inbox, idOnShard, publish, startBroker, subscribe } from './helpers/broker.js';

test('publisher and subscribers on different shards, all QoS levels, order kept', async (t) => {
  const broker = await startBroker(t, { 'node.shards': 2 });
  const subQ2 = await client(t, broker, { clientId: idOnShard(broker, 0, 'sub2') });
  const subQ1 = await client(t, broker, { clientId: idOnShard(broker, 0, 'sub1') });
  const local = await client(t, broker, { clientId: idOnShard(broker, 1, 'local') });
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'pub') });
  const in2 = new Inbox(subQ2);
  const in1 = new Inbox(subQ1);
  const inLocal = new Inbox(local);
  assert.deepEqual(await subscribe(subQ2, 'x/+/z', 2), [2]);
  assert.deepEqual(await subscribe(subQ1, 'x/#', 1), [1]);
  assert.deepEqual(await subscribe(local, 'x/y/z', 0), [0]);
  const n = 30;
  for (let i = 0; i < n; i++) await publish(pub, 'x/y/z', `m${i}`, { qos: (i % 3) as 0 | 1 | 2 });
  const expected = Array.from({ length: n }, (_, i) => `m${i}`);

  // Delivered QoS is min(published, granted) [MQTT-3.8.4-6]. mqtt.js hands QoS 2 messages to the
  // app only at PUBREL, so for the QoS 2 subscriber only the set is compared.
  const got2 = await in2.wait(n);
  assert.deepEqual(got2.map((m) => m.payload).sort(), [...expected].sort());
  for (const m of got2) assert.equal(m.qos, Number(m.payload.slice(1)) % 3);

  // Per-publisher order is kept end to end across shards [MQTT-4.6.0-6].
  const got1 = await in1.wait(n);
  assert.deepEqual(
    got1.map((m) => m.payload),
    expected,
  );
  assert.deepEqual(
    got1.map((m) => m.qos),
    expected.map((_, i) => Math.min(i % 3, 1)),
  );
  const gotLocal = await inLocal.wait(n);
  assert.deepEqual(
    gotLocal.map((m) => m.payload),
    expected,
  );
  assert.ok(
    [...got1, ...got2, ...gotLocal].every((m) => !m.retain),
    'live messages carry RETAIN 0 [MQTT-3.3.1-9]',
  );
  assert.ok(broker.counters.snapshot().crossShardMessages >= n);
});

test('overlapping subscriptions deliver once at the highest granted QoS [MQTT-3.3.5-1]', async (t) => {
  const broker = await startBroker(t);
  const sub = await client(t, broker, { clientId: 'overlap-sub' });
  const pub = await client(t, broker, { clientId: 'overlap-pub' });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'o/#', 0);
  await subscribe(sub, 'o/+', 1);
  await subscribe(sub, 'o/a', 0);
  await publish(pub, 'o/a', 'one', { qos: 2 });
  await publish(pub, 'o/end', 'two', { qos: 1 });
  const got = await inbox.wait(2);
  assert.deepEqual(
    got.map((m) => [m.payload, m.qos]),
    [
      ['one', 1],
      ['two', 1],
    ],
  );
});

test('re-subscribing replaces the subscription QoS [MQTT-3.8.4-3]; unsubscribe stops delivery', async (t) => {
  const broker = await startBroker(t);
  const sub = await client(t, broker, { clientId: 'resub-sub' });
  const pub = await client(t, broker, { clientId: 'resub-pub' });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'r/1', 2);
  await subscribe(sub, 'r/1', 0);
  await publish(pub, 'r/1', 'a', { qos: 2 });
  assert.equal((await inbox.wait(1))[0].qos, 0);
  await new Promise<void>((resolve, reject) =>
    sub.unsubscribe('r/1', (err) => (err ? reject(err) : resolve())),
  );
  await subscribe(sub, 'r/2', 1);
  await publish(pub, 'r/1', 'dropped', { qos: 1 });
  await publish(pub, 'r/2', 'b', { qos: 1 });
  const got = await inbox.wait(2);
  assert.deepEqual(
    got.map((m) => m.payload),
    ['a', 'b'],
  );
});

test('$ topics are not matched by filters starting with a wildcard [MQTT-4.7.2-1]', async (t) => {
  const broker = await startBroker(t);
  const sub = await client(t, broker, { clientId: 'dollar-sub' });
  const pub = await client(t, broker, { clientId: 'dollar-pub' });
  const inbox = new Inbox(sub);
  await subscribe(sub, '#', 1);
  await subscribe(sub, '+/x', 1);
  await subscribe(sub, '$app/#', 1);
  await publish(pub, '$app/x', 'dollar', { qos: 1 });
  await publish(pub, 'plain/x', 'plain', { qos: 1 });
  const got = await inbox.wait(2);
  // '$app/x' arrives once (through '$app/#'), 'plain/x' once (through '#' and '+/x', deduplicated).
  assert.deepEqual(got.map((m) => m.payload).sort(), ['dollar', 'plain']);
});

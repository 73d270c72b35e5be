/**
 * Sessions (MQTT 3.1.1 §3.1.2.4, §3.2.2.2, §4.1): clean session, session present, offline
 * queue, queue limit, session expiry and takeover, across shards.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import { shardOf } from '../src/listener/client-id.js';
import { Counter } from '../src/metrics/counters.js';
import {
  brokerPool,
  client,
  clientWithInbox,
  endClient,
  Inbox,
  idOnShard,
  PacketClient,
  publish,
  startBroker,
  subscribe,
  sync,
  waitFor,
  within,
} from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

/** Row of shard s in the counters (row 0 is the main thread). */
const shardCounter = (broker: Broker, s: number, c: number): number => broker.counters.get(s + 1, c);

test('clean session 1: state is discarded at disconnect [MQTT-3.1.2-6], session present 0 [MQTT-3.2.2-1]', async (t) => {
  const broker = await shared();
  // Publisher on the same shard as the subscriber, then on the other one.
  for (const pubShard of [0, 1]) {
    const id = idOnShard(broker, 0, `clean1-${pubShard}`);
    const pub = await client(t, broker, { clientId: idOnShard(broker, pubShard, `clean1-pub-${pubShard}`) });
    const first = await clientWithInbox(t, broker, { clientId: id, clean: true });
    assert.equal(first.sessionPresent, false);
    assert.deepEqual(await subscribe(first.c, `c1/${pubShard}`, 1), [1]);
    await publish(pub, `c1/${pubShard}`, 'live', { qos: 1 });
    await first.inbox.wait(1);
    await endClient(first.c);
    // Published while away: a clean session is gone, so this is not kept for it.
    await publish(pub, `c1/${pubShard}`, 'while-away', { qos: 1 });

    // Back with clean session 0, which would resume a session if there were one: there is none.
    const again = await clientWithInbox(t, broker, { clientId: id, clean: false });
    assert.equal(again.sessionPresent, false, 'the clean session ended with its connection');
    // Neither the message published while away nor a new one reaches the old subscription (the
    // marker from the same publisher would arrive after them if they did).
    await publish(pub, `c1/${pubShard}`, 'after', { qos: 1 });
    await sync(pub, again.c, again.inbox);
    assert.deepEqual(again.inbox.messages, []);
    await endClient(again.c);
  }
});

test('clean session 1 discards an existing persistent session [MQTT-3.1.2-6]; session present 0 [MQTT-3.2.2-1]', async (t) => {
  const broker = await shared();
  const id = idOnShard(broker, 1, 'discard');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'discard-pub') });
  const p = await clientWithInbox(t, broker, { clientId: id, clean: false });
  assert.equal(p.sessionPresent, false, 'no session yet [MQTT-3.2.2-3]');
  await subscribe(p.c, 'discard/t', 1);
  await endClient(p.c);
  await publish(pub, 'discard/t', 'queued', { qos: 1 });

  const c = await clientWithInbox(t, broker, { clientId: id, clean: true });
  assert.equal(c.sessionPresent, false, 'clean session 1 gets session present 0 [MQTT-3.2.2-1]');
  await publish(pub, 'discard/t', 'after', { qos: 1 });
  await sync(pub, c.c, c.inbox);
  assert.deepEqual(c.inbox.messages, [], 'neither the queued message nor the subscription survived');
  await endClient(c.c);

  // And the clean session itself left nothing behind.
  const back = await clientWithInbox(t, broker, { clientId: id, clean: false });
  assert.equal(back.sessionPresent, false);
});

test('clean session 0 keeps subscriptions; session present 1 on reconnect [MQTT-3.2.2-2]', async (t) => {
  const broker = await shared();
  const resumedBefore = broker.counters.snapshot().sessionResumed;
  for (const pubShard of [0, 1]) {
    const id = idOnShard(broker, 0, `keep-${pubShard}`);
    const pub = await client(t, broker, { clientId: idOnShard(broker, pubShard, `keep-pub-${pubShard}`) });
    const first = await clientWithInbox(t, broker, { clientId: id, clean: false });
    assert.equal(first.sessionPresent, false, 'new session: session present 0 [MQTT-3.2.2-3]');
    await subscribe(first.c, `keep/${pubShard}/#`, 1);
    await endClient(first.c);

    const again = await clientWithInbox(t, broker, { clientId: id, clean: false });
    assert.equal(again.sessionPresent, true);
    // No SUBSCRIBE on this connection: the stored subscription delivers [MQTT-3.1.2-4].
    await publish(pub, `keep/${pubShard}/x`, 'kept', { qos: 1 });
    const got = await again.inbox.wait(1);
    assert.deepEqual(
      got.map((m) => [m.topic, m.payload, m.qos]),
      [[`keep/${pubShard}/x`, 'kept', 1]],
    );
  }
  assert.equal(broker.counters.snapshot().sessionResumed - resumedBefore, 2);
});

/**
 * Publishes QoS 0/1/2 messages to a persistent session while it is away; returns what a
 * reconnect receives, in wire order (a raw client, so QoS 2 is seen as sent, not at PUBREL).
 */
async function offlineQueue(
  t: TestContext,
  storeQos0: boolean,
): Promise<{ got: [string, number, boolean][]; sent: [string, number][] }> {
  const broker = await startBroker(t, { 'mqtt.mqueue_store_qos0': storeQos0 });
  const id = idOnShard(broker, 0, `queue-${storeQos0}`);
  const pubs = [
    await client(t, broker, { clientId: idOnShard(broker, 0, 'queue-pub-local') }),
    await client(t, broker, { clientId: idOnShard(broker, 1, 'queue-pub-remote') }),
  ];
  const first = await PacketClient.connect(t, broker, id, { clean: false });
  assert.deepEqual((await first.pc.subscribe('queue/#', 2)).granted, [2]);
  first.pc.send({ cmd: 'disconnect' });
  await first.pc.waitClosed();

  // Alternate publishers on both shards; per publisher, QoS 0, 1, 2 in turn.
  const sent: [string, number][] = [];
  for (const [i, pub] of pubs.entries()) {
    for (let k = 0; k < 9; k++) {
      const qos = (k % 3) as 0 | 1 | 2;
      const payload = `p${i}-${k}`;
      await publish(pub, `queue/${i}`, payload, { qos });
      sent.push([payload, qos]);
    }
  }
  // Everything is routed before the reconnect: the local publisher's last QoS 2 PUBLISH was
  // acknowledged after routing; the remote one's messages travel in per-shard batches in order,
  // so once a later marker from it reached another client on shard 0, they reached the session.
  const observer = await client(t, broker, { clientId: idOnShard(broker, 0, 'queue-observer') });
  await sync(pubs[1], observer, new Inbox(observer));
  const expected = storeQos0 ? 18 : 12;

  const again = await PacketClient.connect(t, broker, id, { clean: false });
  assert.equal(again.connack.sessionPresent, true);
  const got: [string, number, boolean][] = [];
  for (let n = 0; n < expected; n++) {
    const p = await again.pc.expect('publish');
    got.push([p.payload.toString(), p.qos, p.dup]);
  }
  // Nothing else is pending for it: a ping round trip brings no more PUBLISH.
  assert.deepEqual(
    (await again.pc.ping()).filter((p) => p.cmd === 'publish'),
    [],
  );
  return { got, sent };
}

test('offline queue: QoS 0/1/2 published while away are delivered on reconnect [MQTT-3.1.2-5], in order [MQTT-4.6.0-6] (mqueue_store_qos0 = true)', async (t) => {
  const { got, sent } = await offlineQueue(t, true);
  // Per publisher, in publish order [MQTT-4.6.0-6]; at the published QoS; first sends, so DUP 0.
  for (const i of [0, 1]) {
    assert.deepEqual(
      got.filter(([p]) => p.startsWith(`p${i}-`)),
      sent.filter(([p]) => p.startsWith(`p${i}-`)).map(([p, q]) => [p, q, false]),
    );
  }
});

test('offline queue: QoS 0 is not queued when mqueue_store_qos0 = false; QoS 1/2 are [MQTT-3.1.2-5], in order', async (t) => {
  const { got, sent } = await offlineQueue(t, false);
  for (const i of [0, 1]) {
    assert.deepEqual(
      got.filter(([p]) => p.startsWith(`p${i}-`)),
      sent.filter(([p, q]) => p.startsWith(`p${i}-`) && q > 0).map(([p, q]) => [p, q, false]),
    );
  }
});

test('queue limit: max_mqueue_len drops the oldest and counts it', async (t) => {
  const broker = await startBroker(t, { 'mqtt.max_mqueue_len': 5 });
  const id = idOnShard(broker, 1, 'limit');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'limit-pub') });
  const first = await clientWithInbox(t, broker, { clientId: id, clean: false });
  await subscribe(first.c, 'limit/t', 1);
  await endClient(first.c);
  for (let i = 0; i < 8; i++) await publish(pub, 'limit/t', `m${i}`, { qos: 1 });
  await waitFor(() => broker.counters.snapshot().deliveryDroppedQueueFull >= 3, '3 drops');

  const again = await clientWithInbox(t, broker, { clientId: id, clean: false });
  assert.equal(again.sessionPresent, true);
  const got = await again.inbox.wait(5);
  await sync(pub, again.c, again.inbox);
  assert.deepEqual(
    again.inbox.messages.map((m) => m.payload),
    ['m3', 'm4', 'm5', 'm6', 'm7'],
    'the 5 newest, in order',
  );
  assert.equal(got.length, 5);
  assert.equal(broker.counters.snapshot().deliveryDroppedQueueFull, 3);
});

test('session expiry: an expired session is gone (session present 0 [MQTT-3.2.2-3], nothing queued)', async (t) => {
  const broker = await shared({ 'mqtt.session_expiry_interval': 1 });
  const expiredBefore = broker.counters.snapshot().sessionExpired;
  const id = idOnShard(broker, 0, 'expire');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'expire-pub') });
  const first = await clientWithInbox(t, broker, { clientId: id, clean: false });
  await subscribe(first.c, 'expire/t', 1);
  await endClient(first.c);
  await publish(pub, 'expire/t', 'queued-then-expired', { qos: 1 });

  // Not an assertion on timing: wait (hang-guarded) for the shard to report the expiry.
  await waitFor(() => broker.counters.snapshot().sessionExpired > expiredBefore, 'session expiry');
  const again = await clientWithInbox(t, broker, { clientId: id, clean: false });
  assert.equal(again.sessionPresent, false);
  await publish(pub, 'expire/t', 'no-subscription', { qos: 1 });
  await sync(pub, again.c, again.inbox);
  assert.deepEqual(again.inbox.messages, [], 'no queued message and no subscription');
});

test('session expiry: a reconnect past the expiry time gets a new session even before the sweep', async (t) => {
  const broker = await shared({ 'mqtt.session_expiry_interval': 1 });
  const id = idOnShard(broker, 1, 'expire-race');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'expire-race-pub') });
  const first = await clientWithInbox(t, broker, { clientId: id, clean: false });
  await subscribe(first.c, 'expire-race/t', 1);
  await endClient(first.c);
  const closedAt = Date.now();
  await publish(pub, 'expire-race/t', 'queued-then-expired', { qos: 1 });
  // Past the expiry time, whether or not the once-a-second sweep has run yet.
  await waitFor(() => Date.now() - closedAt > 1100, 'expiry time');
  const again = await clientWithInbox(t, broker, { clientId: id, clean: false });
  assert.equal(again.sessionPresent, false);
  await sync(pub, again.c, again.inbox);
  assert.deepEqual(again.inbox.messages, []);
});

test('takeover: a second connection with the same client id closes the first [MQTT-3.1.4-2] and resumes its session', async (t) => {
  const broker = await shared();
  const takenBefore = broker.counters.snapshot().sessionTakenover;
  for (const pubShard of [0, 1]) {
    const id = idOnShard(broker, 1, `takeover-${pubShard}`);
    const pub = await client(t, broker, {
      clientId: idOnShard(broker, pubShard, `takeover-pub-${pubShard}`),
    });
    const old = await clientWithInbox(t, broker, { clientId: id, clean: false });
    await subscribe(old.c, `tk/${pubShard}`, 1);
    const oldClosed = new Promise<void>((resolve) => old.c.once('close', () => resolve()));

    const fresh = await clientWithInbox(t, broker, { clientId: id, clean: false });
    await within(oldClosed, 'the old connection closed');
    assert.equal(fresh.sessionPresent, true, 'the session is resumed, not recreated');
    await publish(pub, `tk/${pubShard}`, 'to-new', { qos: 1 });
    const got = await fresh.inbox.wait(1);
    assert.deepEqual(
      got.map((m) => m.payload),
      ['to-new'],
    );
    assert.deepEqual(old.inbox.messages, []);
  }
  assert.equal(broker.counters.snapshot().sessionTakenover - takenBefore, 2);
});

test('takeover with clean session 1 closes the first [MQTT-3.1.4-2] and starts a new session [MQTT-3.1.2-6]', async (t) => {
  const broker = await shared();
  const id = idOnShard(broker, 0, 'takeover-clean');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'takeover-clean-pub') });
  const old = await clientWithInbox(t, broker, { clientId: id, clean: false });
  await subscribe(old.c, 'tkc/t', 1);
  const oldClosed = new Promise<void>((resolve) => old.c.once('close', () => resolve()));
  const fresh = await clientWithInbox(t, broker, { clientId: id, clean: true });
  await within(oldClosed, 'the old connection closed');
  assert.equal(fresh.sessionPresent, false);
  await publish(pub, 'tkc/t', 'x', { qos: 1 });
  await sync(pub, fresh.c, fresh.inbox);
  assert.deepEqual(fresh.inbox.messages, [], 'the old subscription was discarded');
});

for (const shards of [2, 4]) {
  test(`takeover happens within one shard: the same client id always maps to the same shard (${shards} shards)`, async (t) => {
    const broker = await (shards === 2 ? shared() : shared({ 'node.shards': shards }));
    assert.equal(broker.shardCount, shards);
    const perShard = (c: number) => Array.from({ length: shards }, (_, o) => shardCounter(broker, o, c));
    for (let s = 0; s < shards; s++) {
      const id = idOnShard(broker, s, `same-${shards}`);
      for (let k = 0; k < 3; k++)
        assert.equal(shardOf(id, shards), s, 'the mapping is a pure function of the id');
      const old = await clientWithInbox(t, broker, { clientId: id, clean: false });
      const oldClosed = new Promise<void>((resolve) => old.c.once('close', () => resolve()));
      const takenBefore = perShard(Counter.sessionTakenover);
      const resumedBefore = perShard(Counter.sessionResumed);
      const fresh = await clientWithInbox(t, broker, { clientId: id, clean: false });
      assert.equal(fresh.sessionPresent, true);
      await within(oldClosed, 'the old connection closed');
      // The shard that owns the id had both connections: the takeover and the resume are
      // counted there, and on no other shard.
      await waitFor(
        () => perShard(Counter.sessionTakenover)[s] === takenBefore[s] + 1,
        `takeover on shard ${s}`,
      );
      assert.deepEqual(
        perShard(Counter.sessionTakenover).map((n, o) => n - takenBefore[o]),
        perShard(Counter.sessionTakenover).map((_, o) => (o === s ? 1 : 0)),
      );
      assert.deepEqual(
        perShard(Counter.sessionResumed).map((n, o) => n - resumedBefore[o]),
        perShard(Counter.sessionResumed).map((_, o) => (o === s ? 1 : 0)),
      );
    }
  });
}

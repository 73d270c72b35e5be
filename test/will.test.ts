/**
 * Will messages (MQTT 3.1.1 §3.1.2.5-§3.1.2.7, §3.14.4): published when the network connection
 * closes for any reason other than DISCONNECT [MQTT-3.1.2-8], with its QoS and RETAIN, and
 * discarded on DISCONNECT [MQTT-3.14.4-3]. Will owners and subscribers sit on different shards
 * unless a test says otherwise.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import {
  brokerPool,
  client,
  clientWithInbox,
  Inbox,
  idOnShard,
  PacketClient,
  publish,
  subscribe,
  sync,
  waitFor,
} from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

/** A subscriber to `topic` on `shard` (mqtt.js, QoS 2) and its inbox. */
async function subscriber(t: TestContext, broker: Broker, shard: number, topic: string, name: string) {
  const s = await clientWithInbox(t, broker, { clientId: idOnShard(broker, shard, name) });
  await subscribe(s.c, topic, 2);
  return s;
}

/** A raw client with a will, so that the test decides exactly how its connection ends. */
function willClient(
  t: TestContext,
  broker: Broker,
  clientId: string,
  will: { topic: string; payload: string; qos?: 0 | 1 | 2; retain?: boolean },
  opts: { keepalive?: number; clean?: boolean } = {},
) {
  return PacketClient.connect(t, broker, clientId, {
    keepalive: opts.keepalive ?? 60,
    clean: opts.clean ?? true,
    will: { qos: 0, retain: false, ...will },
  });
}

test('will is published when the socket closes without DISCONNECT [MQTT-3.1.2-8]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  for (const subShard of [0, 1]) {
    const topic = `will/closed/${subShard}`;
    const sub = await subscriber(t, broker, subShard, topic, `w-closed-sub-${subShard}`);
    const { pc } = await willClient(t, broker, idOnShard(broker, 1, `w-closed-${subShard}`), {
      topic,
      payload: 'gone',
    });
    await pc.destroy();
    const [m] = await sub.inbox.wait(1);
    assert.deepEqual([m.topic, m.payload, m.qos, m.retain], [topic, 'gone', 0, false]);
  }
  assert.equal(broker.counters.snapshot().willsPublished - base.willsPublished, 2);
});

test('will is published on keep-alive timeout [MQTT-3.1.2-24], [MQTT-3.1.2-8]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await subscriber(t, broker, 0, 'will/keepalive', 'w-ka-sub');
  const { pc } = await willClient(
    t,
    broker,
    idOnShard(broker, 1, 'w-ka'),
    { topic: 'will/keepalive', payload: 'silent', qos: 1 },
    { keepalive: 1 },
  );
  // The client goes silent: no PINGREQ. The broker closes it within 1.5 keep-alive intervals
  // (plus the once-a-second sweep); the hang guards are generous.
  const [m] = await sub.inbox.wait(1, 15_000);
  assert.deepEqual([m.topic, m.payload, m.qos], ['will/keepalive', 'silent', 1]);
  await pc.waitClosed(15_000);
  assert.equal(broker.counters.snapshot().keepaliveTimeouts - base.keepaliveTimeouts, 1);
});

test('will is published when the broker closes the connection for a protocol violation [MQTT-3.1.2-8]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await subscriber(t, broker, 1, 'will/violation', 'w-viol-sub');
  const { pc } = await willClient(t, broker, idOnShard(broker, 0, 'w-viol'), {
    topic: 'will/violation',
    payload: 'bad',
  });
  // SUBSCRIBE with fixed-header flags 0 instead of 2 [MQTT-3.8.1-1]: the broker closes the connection.
  pc.send(Buffer.from([0x80, 6, 0, 1, 0, 1, 0x61, 0]));
  await pc.waitClosed();
  const [m] = await sub.inbox.wait(1);
  assert.deepEqual([m.topic, m.payload], ['will/violation', 'bad']);
  const now = broker.counters.snapshot();
  assert.equal(now.protocolErrors + now.malformedPackets - base.protocolErrors - base.malformedPackets, 1);
});

test('will of the old connection is published on takeover [MQTT-3.1.4-2], [MQTT-3.1.2-8]', async (t) => {
  const broker = await shared();
  const sub = await subscriber(t, broker, 0, 'will/takeover/#', 'w-tk-sub');
  const id = idOnShard(broker, 1, 'w-tk');
  const old = await willClient(
    t,
    broker,
    id,
    { topic: 'will/takeover/old', payload: 'old' },
    { clean: false },
  );
  const fresh = await willClient(
    t,
    broker,
    id,
    { topic: 'will/takeover/new', payload: 'new' },
    { clean: false },
  );
  assert.equal(fresh.connack.sessionPresent, true);
  await old.pc.waitClosed();
  const [m] = await sub.inbox.wait(1);
  assert.deepEqual([m.topic, m.payload], ['will/takeover/old', 'old']);
  // The new connection's will is its own, and it is still armed: closing it publishes it.
  await fresh.pc.destroy();
  const got = await sub.inbox.wait(2);
  assert.deepEqual(
    got.map((x) => x.payload),
    ['old', 'new'],
  );
});

test('will is NOT published after DISCONNECT [MQTT-3.14.4-3]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await subscriber(t, broker, 0, 'will/graceful', 'w-grace-sub');
  // A marker publisher on the will owner's shard: its message is routed after anything the
  // closing connection published (same shard, same batch order).
  const marker = await client(t, broker, { clientId: idOnShard(broker, 1, 'w-grace-marker') });
  const { pc } = await willClient(t, broker, idOnShard(broker, 1, 'w-grace'), {
    topic: 'will/graceful',
    payload: 'no',
    qos: 1,
  });
  pc.send({ cmd: 'disconnect' });
  await pc.waitClosed();
  await publish(marker, 'will/graceful', 'marker', { qos: 1 });
  const got = await sub.inbox.wait(1);
  assert.deepEqual(
    got.map((m) => m.payload),
    ['marker'],
  );
  assert.equal(broker.counters.snapshot().willsPublished - base.willsPublished, 0);
});

test('will QoS is honoured [MQTT-3.1.2-14], capped by the subscription QoS [MQTT-3.8.4-6]', async (t) => {
  const broker = await shared();
  const sub2 = await subscriber(t, broker, 0, 'will/qos/#', 'w-qos-sub2');
  const sub1 = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 1, 'w-qos-sub1') });
  await subscribe(sub1.c, 'will/qos/#', 1);
  for (const qos of [0, 1, 2] as const) {
    const { pc } = await willClient(t, broker, idOnShard(broker, qos % 2, `w-qos-${qos}`), {
      topic: `will/qos/${qos}`,
      payload: `q${qos}`,
      qos,
    });
    await pc.destroy();
    await sub2.inbox.wait(qos + 1);
    await sub1.inbox.wait(qos + 1);
  }
  // mqtt.js hands QoS 2 to the app at PUBREL, so compare as sets of [payload, qos].
  assert.deepEqual(sub2.inbox.messages.map((m) => `${m.payload}:${m.qos}`).sort(), ['q0:0', 'q1:1', 'q2:2']);
  assert.deepEqual(sub1.inbox.messages.map((m) => `${m.payload}:${m.qos}`).sort(), ['q0:0', 'q1:1', 'q2:1']);
});

test('will QoS 1 to an offline persistent subscriber is queued for it [MQTT-3.1.2-5]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const subId = idOnShard(broker, 0, 'w-offline-sub');
  const first = await clientWithInbox(t, broker, { clientId: subId, clean: false });
  await subscribe(first.c, 'will/offline', 1);
  await new Promise<void>((resolve) => first.c.end(false, {}, () => resolve()));
  const { pc } = await willClient(t, broker, idOnShard(broker, 1, 'w-offline'), {
    topic: 'will/offline',
    payload: 'later',
    qos: 1,
  });
  await pc.destroy();
  await waitFor(
    () => broker.counters.snapshot().willsPublished === base.willsPublished + 1,
    'will published',
  );
  // Routed across shards; a marker from the will's shard makes sure it reached the session.
  const observer = await client(t, broker, { clientId: idOnShard(broker, 0, 'w-offline-observer') });
  const marker = await client(t, broker, { clientId: idOnShard(broker, 1, 'w-offline-marker') });
  await sync(marker, observer, new Inbox(observer));
  const again = await clientWithInbox(t, broker, { clientId: subId, clean: false });
  assert.equal(again.sessionPresent, true);
  const [m] = await again.inbox.wait(1);
  assert.deepEqual([m.payload, m.qos], ['later', 1]);
});

test('will RETAIN is honoured: a later subscriber gets it as a retained message [MQTT-3.1.2-17]', async (t) => {
  const broker = await shared();
  const retainedBefore = broker.retained.size;
  const live = await subscriber(t, broker, 1, 'will/retained', 'w-ret-live');
  const { pc } = await willClient(t, broker, idOnShard(broker, 0, 'w-ret'), {
    topic: 'will/retained',
    payload: 'kept',
    qos: 1,
    retain: true,
  });
  await pc.destroy();
  const [m] = await live.inbox.wait(1);
  // Live delivery to an existing subscription carries RETAIN 0 [MQTT-3.3.1-9].
  assert.deepEqual([m.payload, m.retain], ['kept', false]);
  await waitFor(() => broker.retained.size === retainedBefore + 1, 'the will stored as retained');
  for (const shard of [0, 1]) {
    const later = await clientWithInbox(t, broker, {
      clientId: idOnShard(broker, shard, `w-ret-later-${shard}`),
    });
    await subscribe(later.c, 'will/#', 2);
    const [r] = await later.inbox.wait(1);
    assert.deepEqual(
      [r.topic, r.payload, r.qos, r.retain],
      ['will/retained', 'kept', 1, true],
      'sent because of the subscription: RETAIN 1 [MQTT-3.3.1-8]',
    );
  }
});

/**
 * Retained messages (OASIS MQTT 3.1.1, 3.3.1.3): stored by the main thread, looked up by the
 * subscriber's shard, and delivered after SUBACK. Real broker threads, real TCP clients.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import type { Broker } from '../src/broker/broker.js';
import {
  client,
  endClient,
  Inbox,
  idOnShard,
  PacketClient,
  publish,
  type Received,
  startBroker,
  subscribe,
  waitForMessage,
} from './helpers/broker.js';

type Ctx = Parameters<typeof client>[0];

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;

// One broker for the file (starting shard threads costs seconds on a loaded machine); each test
// uses its own topic namespace and client ids, and checks the store through its own topics.
let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} });
});
after(() => broker.stop());

let barrierSeq = 0;
let lateSeq = 0;

/**
 * Resolves once every retained message the broker is going to send `c` for its earlier
 * subscriptions has arrived, so that a test can assert that something was NOT sent. A retained
 * marker is stored (its PUBACK is held until main has stored it) and then subscribed to: the
 * earlier subscriptions' retained messages were written right behind their SUBACKs, before this
 * SUBSCRIBE was even sent, and the connection writes in order, so the marker arrives after them.
 * The marker lives under '$barrier/', which no filter starting with a wildcard matches [MQTT-4.7.2-1].
 */
async function retainedBarrier(c: MqttClient, inbox: Inbox): Promise<void> {
  const topic = `$barrier/${++barrierSeq}`;
  await publish(c, topic, 'marker', { qos: 1, retain: true });
  await subscribe(c, topic, 0);
  await waitForMessage(inbox, (m) => m.topic === topic);
  await new Promise<void>((resolve, reject) =>
    c.unsubscribe(topic, (err) => (err ? reject(err) : resolve())),
  );
  await publish(c, topic, '', { qos: 1, retain: true });
  inbox.messages.splice(
    inbox.messages.findIndex((m) => m.topic === topic),
    1,
  );
}

/** Subscribes a fresh client on `shard` to `filter` and returns exactly the retained messages it got. */
async function retainedFor(t: Ctx, shard: number, filter: string, qos: 0 | 1 | 2 = 1): Promise<Received[]> {
  const c = await client(t, broker, { clientId: idOnShard(broker, shard, `late${++lateSeq}`) });
  const inbox = new Inbox(c);
  assert.deepEqual(await subscribe(c, filter, qos), [qos]);
  await retainedBarrier(c, inbox);
  await endClient(c);
  return inbox.messages;
}

const topicsOf = (msgs: Received[]): string[] => msgs.map((m) => m.topic).sort();

test('a retained message is stored and sent with RETAIN 1 to a later subscriber on another shard; live subscribers get RETAIN 0', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'ret-pub') });
  const live = await client(t, broker, { clientId: idOnShard(broker, 1, 'ret-live') });
  const liveInbox = new Inbox(live);
  await subscribe(live, 'ret/a', 1);

  await publish(pub, 'ret/a', 'hello', { qos: 1, retain: true });
  // Stored with its QoS [MQTT-3.3.1-5]; the PUBACK is only sent once main has stored it.
  const stored = broker.retained.get('ret/a');
  assert.ok(stored, 'stored when the PUBACK arrives');
  assert.equal(Buffer.from(stored.payload).toString(), 'hello');
  assert.equal(stored.qos, 1);

  // An established subscription gets RETAIN 0 [MQTT-3.3.1-9].
  const [m] = await liveInbox.wait(1);
  assert.deepEqual([m.payload, m.retain], ['hello', false]);

  // A new subscription on the other shard gets it with RETAIN 1 [MQTT-3.3.1-6], [MQTT-3.3.1-8].
  const late = await retainedFor(t, 1, 'ret/a');
  assert.deepEqual(
    late.map((r) => [r.topic, r.payload, r.retain, r.qos]),
    [['ret/a', 'hello', true, 1]],
  );
  // ... and on the publisher's shard too.
  const sameShard = await retainedFor(t, 0, 'ret/a');
  assert.deepEqual(
    sameShard.map((r) => [r.payload, r.retain]),
    [['hello', true]],
  );

  // RETAIN 0 neither stores nor replaces the retained message [MQTT-3.3.1-12].
  await publish(pub, 'ret/a', 'not retained', { qos: 1 });
  await publish(pub, 'ret/b', 'not retained', { qos: 1 });
  assert.equal((await liveInbox.wait(2))[1].retain, false);
  const after = await retainedFor(t, 1, 'ret/+');
  assert.deepEqual(
    after.map((r) => [r.topic, r.payload]),
    [['ret/a', 'hello']],
  );
  assert.equal(broker.retained.match('ret/#').length, 1);
});

test('retained messages are matched through + and # (# also matches the parent level), but a leading wildcard never matches $ topics', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'wild-pub') });
  const topics = ['w', 'w/a', 'w/a/b', 'w/c/d', 'x/a', '$w/a', '$SYS/broker/x'];
  for (const topic of topics) await publish(pub, topic, `v:${topic}`, { qos: 1, retain: true });

  const cases: [filter: string, expected: string[], why: string][] = [
    ['w/+', ['w/a'], '+ matches exactly one level [MQTT-4.7.1-3]'],
    [
      'w/#',
      ['w', 'w/a', 'w/a/b', 'w/c/d'],
      "# matches the parent and all children (4.7.1.2: 'sport/#' also matches 'sport')",
    ],
    ['w/+/b', ['w/a/b'], '+ in the middle'],
    ['+/a', ['w/a', 'x/a'], 'not $w/a: a filter starting with a wildcard [MQTT-4.7.2-1]'],
    ['#', ['w', 'w/a', 'w/a/b', 'w/c/d', 'x/a'], 'no $ topics through # [MQTT-4.7.2-1]'],
    ['+/+', ['w/a', 'x/a'], 'no $ topics through + [MQTT-4.7.2-1]'],
    ['$w/#', ['$w/a'], 'a filter starting with $ matches $ topics'],
    ['$SYS/+/x', ['$SYS/broker/x'], '$SYS like any $ topic'],
    ['w/a/b/#', ['w/a/b'], '# matches the parent level at depth'],
    ['w/a/b/+', [], '+ needs a level to be present'],
  ];
  let shard = 0;
  for (const [filter, expected, why] of cases) {
    const got = await retainedFor(t, (shard = 1 - shard), filter);
    if (filter.startsWith('+') || filter.startsWith('#')) {
      // Other tests' retained topics match too: compare this test's topics, and check that
      // no $ topic at all came through the leading wildcard.
      const dollar = got.filter((m) => m.topic.startsWith('$'));
      assert.deepEqual(dollar, [], `${filter}: ${why}`);
      assert.deepEqual(
        topicsOf(got.filter((m) => topics.includes(m.topic))),
        [...expected].sort(),
        `${filter}: ${why}`,
      );
    } else {
      assert.deepEqual(topicsOf(got), [...expected].sort(), `${filter}: ${why}`);
    }
    for (const m of got) {
      if (topics.includes(m.topic)) assert.equal(m.payload, `v:${m.topic}`);
      assert.equal(m.retain, true, 'sent because of a new subscription: RETAIN 1 [MQTT-3.3.1-8]');
    }
  }
});

test('a newer retained message replaces the old one, also a QoS 0 one [MQTT-3.3.1-7]', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'rep-pub') });
  await publish(pub, 'rep/t', 'v1', { qos: 2, retain: true });
  await publish(pub, 'rep/t', 'v2', { qos: 1, retain: true });
  let got = await retainedFor(t, 1, 'rep/#', 2);
  assert.deepEqual(
    got.map((m) => [m.payload, m.qos]),
    [['v2', 1]],
  );

  // QoS 0 has no ack: a QoS 1 retained publish behind it on the same connection is a fence
  // (the shard forwards both to main in order, and that PUBACK is held until stored).
  await publish(pub, 'rep/t', 'v3', { qos: 0, retain: true });
  await publish(pub, 'rep/fence', 'f', { qos: 1, retain: true });
  got = await retainedFor(t, 1, 'rep/t', 2);
  assert.deepEqual(
    got.map((m) => [m.payload, m.qos, m.retain]),
    [['v3', 0, true]],
  );
  assert.equal(broker.retained.match('rep/#').length, 2);
});

test('a retained message with an empty payload is delivered to live subscribers, deletes the retained message and is not stored [MQTT-3.3.1-10] [MQTT-3.3.1-11]', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'del-pub') });
  const live = await client(t, broker, { clientId: idOnShard(broker, 1, 'del-live') });
  const liveInbox = new Inbox(live);
  await subscribe(live, 'del/#', 1);

  await publish(pub, 'del/a', 'x', { qos: 1, retain: true });
  await publish(pub, 'del/keep', 'k', { qos: 1, retain: true });
  assert.equal(broker.retained.match('del/#').length, 2);
  assert.deepEqual(topicsOf(await retainedFor(t, 1, 'del/#')), ['del/a', 'del/keep']);
  const before = broker.counters.snapshot();

  await publish(pub, 'del/a', '', { qos: 1, retain: true });
  // Processed as normal: the live subscriber gets it, with RETAIN 0 [MQTT-3.3.1-10].
  const empty = await waitForMessage(liveInbox, (m) => m.topic === 'del/a' && m.payload === '');
  assert.equal(empty.retain, false);
  assert.equal(broker.retained.get('del/a'), null, 'removed [MQTT-3.3.1-10]');

  // A zero-byte retained message on a topic without one is not stored either [MQTT-3.3.1-11].
  await publish(pub, 'del/never', '', { qos: 1, retain: true });
  assert.equal(broker.retained.get('del/never'), null);
  assert.equal(broker.retained.match('del/#').length, 1);
  const now = broker.counters.snapshot();
  assert.equal(now.retainedCount, before.retainedCount - 1, 'the retained-messages gauge went down by one');
  assert.equal(
    now.messagesRetained,
    before.messagesRetained,
    'deletions are not counted as retained messages',
  );

  // Future subscribers get no retained message for the topic, on either shard.
  for (const shard of [0, 1]) {
    const got = await retainedFor(t, shard, 'del/#');
    assert.deepEqual(
      got.map((m) => [m.topic, m.payload]),
      [['del/keep', 'k']],
    );
  }
});

test('subscribing again with the same filter re-sends the retained messages, at the new QoS, without interrupting the flow [MQTT-3.8.4-3]', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'resub-pub') });
  const sub = await client(t, broker, { clientId: idOnShard(broker, 1, 'resub-sub') });
  const inbox = new Inbox(sub);
  await publish(pub, 'resub/a', 'r', { qos: 2, retain: true });

  await subscribe(sub, 'resub/+', 0);
  const [first] = await inbox.wait(1);
  assert.deepEqual([first.payload, first.retain, first.qos], ['r', true, 0]);

  await subscribe(sub, 'resub/+', 1);
  const second = (await inbox.wait(2))[1];
  assert.deepEqual([second.payload, second.retain, second.qos], ['r', true, 1]);

  // The replaced subscription still delivers, once per message, at its new QoS.
  await publish(pub, 'resub/b', 'live', { qos: 2 });
  const third = (await inbox.wait(3))[2];
  assert.deepEqual([third.payload, third.retain, third.qos], ['live', false, 1]);
  await retainedBarrier(sub, inbox);
  assert.equal(inbox.messages.length, 3, JSON.stringify(inbox.messages));
});

test('a retained message is delivered at the minimum of its QoS and the granted QoS [MQTT-3.8.4-6]', {
  timeout: T,
}, async (t) => {
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'qos-pub') });
  // The QoS 0 publish is fenced by the QoS 1 and 2 retained publishes behind it (see above).
  await publish(pub, 'q/0', 'zero', { qos: 0, retain: true });
  await publish(pub, 'q/1', 'one', { qos: 1, retain: true });
  await publish(pub, 'q/2', 'two', { qos: 2, retain: true });
  for (const granted of [0, 1, 2] as const) {
    for (const shard of [0, 1]) {
      const got = await retainedFor(t, shard, 'q/+', granted);
      assert.deepEqual(
        got.map((m) => [m.topic, m.qos, m.retain]).sort(),
        [
          ['q/0', 0, true],
          ['q/1', Math.min(1, granted), true],
          ['q/2', Math.min(2, granted), true],
        ],
        `granted QoS ${granted}, shard ${shard}`,
      );
    }
  }
});

test('once a retained QoS 1 publish is acknowledged, a subscription made right after on any shard gets it (20 rounds)', {
  timeout: T,
}, async (t) => {
  const a = await client(t, broker, { clientId: idOnShard(broker, 0, 'held-a') });
  const b = await client(t, broker, { clientId: idOnShard(broker, 1, 'held-b') });
  const inboxA = new Inbox(a);
  const inboxB = new Inbox(b);
  for (let i = 0; i < 20; i++) {
    // Alternate the direction: publisher on shard 0 then on shard 1.
    const [pub, pubInbox, other, otherInbox] = i % 2 === 0 ? [a, inboxA, b, inboxB] : [b, inboxB, a, inboxA];
    const topic = `held/${i}`;
    await publish(pub, topic, `v${i}`, { qos: 1, retain: true });
    // PUBACK received: subscribe at once, from the other shard and from the publisher's own.
    const subs = [subscribe(other, topic, 1), subscribe(pub, topic, 1)];
    const [fromOther, fromSelf] = await Promise.all([
      waitForMessage(otherInbox, (m) => m.topic === topic),
      waitForMessage(pubInbox, (m) => m.topic === topic),
    ]);
    await Promise.all(subs);
    for (const m of [fromOther, fromSelf])
      assert.deepEqual([m.payload, m.retain, m.qos], [`v${i}`, true, 1], `round ${i}`);
  }
});

test('PUBACK and PUBREC are sent in PUBLISH order when retained and non-retained publishes are interleaved [MQTT-4.6.0-2] [MQTT-4.6.0-3]', {
  timeout: T,
}, async (t) => {
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'raw-order'));
  const n = 60;
  const frames: Buffer[] = [];
  const expected: [string, number][] = [];
  for (let id = 1; id <= n; id++) {
    const qos = id % 5 === 0 ? 2 : 1;
    // Runs of retained and non-retained messages, so acks queue behind held ones and not.
    const retain = id % 3 !== 0;
    frames.push(
      mqttPacket.generate({
        cmd: 'publish',
        topic: `order/${id % 7}`,
        payload: Buffer.from(`p${id}`),
        qos,
        retain,
        dup: false,
        messageId: id,
      }),
    );
    expected.push([qos === 1 ? 'puback' : 'pubrec', id]);
    // A QoS 0 retained publish in between: it holds no ack and must not reorder the others.
    if (id % 4 === 0) {
      frames.push(
        mqttPacket.generate({
          cmd: 'publish',
          topic: `order/q0/${id}`,
          payload: Buffer.from('z'),
          qos: 0,
          retain: true,
          dup: false,
        }),
      );
    }
  }
  // One write: the broker handles them all in one or a few reads.
  pc.send(Buffer.concat(frames));
  const acks: [string, number][] = [];
  for (let i = 0; i < n; i++) {
    const p = await pc.next();
    assert.ok(p.cmd === 'puback' || p.cmd === 'pubrec', `unexpected ${p.cmd}`);
    acks.push([p.cmd, p.messageId ?? -1]);
  }
  assert.deepEqual(acks, expected);

  // PUBREL → PUBCOMP also goes through the ack queue: interleave it with retained publishes.
  const more: Buffer[] = [];
  const expected2: [string, number][] = [];
  for (let id = 5; id <= n; id += 5) {
    more.push(mqttPacket.generate({ cmd: 'pubrel', messageId: id }));
    expected2.push(['pubcomp', id]);
    const pid = 1000 + id;
    more.push(
      mqttPacket.generate({
        cmd: 'publish',
        topic: `order/r/${id}`,
        payload: Buffer.from('r'),
        qos: 1,
        retain: true,
        dup: false,
        messageId: pid,
      }),
    );
    expected2.push(['puback', pid]);
  }
  pc.send(Buffer.concat(more));
  const acks2: [string, number][] = [];
  for (let i = 0; i < expected2.length; i++) {
    const p = await pc.next();
    assert.ok(p.cmd === 'puback' || p.cmd === 'pubcomp', `unexpected ${p.cmd}`);
    acks2.push([p.cmd, p.messageId ?? -1]);
  }
  assert.deepEqual(acks2, expected2);
  assert.equal(broker.retained.get('order/r/60')?.qos, 1);
});

test('a retained message published after SUBACK reaches the new subscriber once, live, with RETAIN 0 [MQTT-3.3.1-9] (20 rounds)', {
  timeout: T,
}, async (t) => {
  const a = await client(t, broker, { clientId: idOnShard(broker, 0, 'after-a') });
  const b = await client(t, broker, { clientId: idOnShard(broker, 1, 'after-b') });
  const inboxA = new Inbox(a);
  const inboxB = new Inbox(b);
  for (let i = 0; i < 20; i++) {
    const [pub, sub, inbox] = i % 2 === 0 ? [a, b, inboxB] : [b, a, inboxA];
    const topic = `after/${i}`;
    // SUBACK received: the subscription is established, and only then is the message published.
    await subscribe(sub, topic, 1);
    await publish(pub, topic, `v${i}`, { qos: 1, retain: true });
    await waitForMessage(inbox, (m) => m.topic === topic);
    await retainedBarrier(sub, inbox);
    assert.deepEqual(
      inbox.messages.filter((m) => m.topic === topic).map((m) => [m.payload, m.retain]),
      [[`v${i}`, false]],
      `round ${i}: a copy sent as a retained message for the subscription made before it was published`,
    );
  }
});

/**
 * MQTT 5 subscription options and acknowledgements against the real broker (2 shards, real TCP):
 * No Local, Retain As Published, Retain Handling, Subscription Identifiers, SUBACK and UNSUBACK
 * reason codes, and MQTT 3.1.1 and 5 subscribers side by side. Publishers and subscribers sit on
 * different shards (idOnShard) unless the point is the publisher's own connection (No Local).
 * Cited: OASIS MQTT Version 5.0 (07 March 2019), normative statements [MQTT-x.x.x-y].
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { IPublishPacket } from 'mqtt-packet';
import type { Broker } from '../src/broker/broker.js';
import {
  client5,
  idOnShard,
  mqttString,
  PacketClient,
  PacketClient5,
  type Prop5,
  parsePublish5,
  props5,
  publish5,
  publishFrame5,
  rawConnect5,
  rawConnected,
  rawFrame,
  readFrame,
  reconfigureShards,
  startBroker,
  subscribe5,
  waitForPacket,
} from './helpers/broker.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;
let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} }, { 'node.shards': 2 });
});
after(() => broker?.stop());

const payloads = (ps: readonly IPublishPacket[]): string[] => ps.map((p) => p.payload.toString());
const subIds = (p: IPublishPacket): number[] => {
  const s = p.properties?.subscriptionIdentifier;
  return s === undefined ? [] : Array.isArray(s) ? [...s].sort((a, b) => a - b) : [s];
};

test("No Local: own messages are not delivered, other clients' are [MQTT-3.8.3-3]", {
  timeout: T,
}, async (t) => {
  const a = await client5(t, broker, { clientId: idOnShard(broker, 0, 'nl-a') });
  const watcher = await client5(t, broker, { clientId: idOnShard(broker, 0, 'nl-w') });
  const b = await client5(t, broker, { clientId: idOnShard(broker, 1, 'nl-b') });
  assert.deepEqual(await subscribe5(a.c, 'nl/t', { qos: 1, nl: true }), [1]);
  assert.deepEqual(await subscribe5(watcher.c, 'nl/t', { qos: 1 }), [1]);
  const dropped = broker.counters.snapshot().deliveryDroppedNoLocal;

  // A's own message would be written to A before its PUBACK (same shard, routed before the
  // ack), so when B's message arrives anything of A's own would already be there.
  await publish5(a.c, 'nl/t', 'own', { qos: 1 });
  await publish5(b.c, 'nl/t', 'other', { qos: 1 });
  await a.inbox.wait(1);
  assert.deepEqual(payloads(a.inbox.packets), ['other'], "No Local: only the other client's message");
  // No Local is per subscription: another client on the same shard without it gets both.
  await watcher.inbox.wait(2);
  assert.deepEqual(payloads(watcher.inbox.packets), ['own', 'other']);
  assert.equal(broker.counters.snapshot().deliveryDroppedNoLocal, dropped + 1);

  // An overlapping subscription without No Local delivers the own message, once [MQTT-3.3.4-2].
  assert.deepEqual(await subscribe5(a.c, 'nl/#', { qos: 0 }), [0]);
  await publish5(a.c, 'nl/t', 'own2', { qos: 1 });
  await publish5(b.c, 'nl/t', 'other2', { qos: 1 });
  await a.inbox.wait(3);
  assert.deepEqual(payloads(a.inbox.packets), ['other', 'own2', 'other2']);
  // QoS: the highest granted of the matching subscriptions, which for own2 is only nl/# (0).
  assert.deepEqual(
    a.inbox.packets.map((p) => p.qos),
    [1, 0, 1],
  );
});

test('Retain As Published: RETAIN kept on live delivery with 1, cleared with 0 [MQTT-3.3.1-12] [MQTT-3.3.1-13]', {
  timeout: T,
}, async (t) => {
  const { pc: keep } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'rap-1'));
  const { pc: clear } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'rap-0'));
  const pub = await client5(t, broker, { clientId: idOnShard(broker, 1, 'rap-pub') });
  const subKeep = await keep.subscribe([{ topic: 'rap/+', qos: 1, rap: true, rh: 2 }]);
  const subClear = await clear.subscribe([{ topic: 'rap/+', qos: 1, rap: false, rh: 2 }]);
  assert.deepEqual([subKeep.granted, subClear.granted], [[1], [1]]);

  // Live messages (the subscriptions exist): retained QoS 0 and QoS 1, then a plain one.
  await publish5(pub.c, 'rap/q0', 'r0', { qos: 0, retain: true });
  await publish5(pub.c, 'rap/q1', 'r1', { qos: 1, retain: true });
  await publish5(pub.c, 'rap/q1', 'plain', { qos: 1, retain: false });
  for (const [pc, rap] of [
    [keep, true],
    [clear, false],
  ] as const) {
    const got: IPublishPacket[] = [];
    while (got.length < 3) {
      const p = await pc.expect('publish');
      got.push(p);
      if (p.qos === 1) pc.send({ cmd: 'puback', messageId: p.messageId! });
    }
    assert.deepEqual(
      got.map((p) => [p.topic, p.payload.toString(), p.qos, p.retain]),
      [
        ['rap/q0', 'r0', 0, rap],
        ['rap/q1', 'r1', 1, rap],
        ['rap/q1', 'plain', 1, false],
      ],
      `Retain As Published ${rap ? 1 : 0}`,
    );
  }
  // A new subscription's retained message carries RETAIN 1 whatever Retain As Published says.
  const late = await clear.subscribe([{ topic: 'rap/q1', qos: 1, rap: false, rh: 0 }], 2);
  assert.deepEqual(late.granted, [1]);
  const r = await clear.expect('publish');
  assert.deepEqual([r.topic, r.payload.toString(), r.retain], ['rap/q1', 'r1', true]);
});

test('Retain Handling 0, 1 and 2 [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.8.4-4]', {
  timeout: T,
}, async (t) => {
  const pub = await client5(t, broker, { clientId: idOnShard(broker, 0, 'rh-pub') });
  await publish5(pub.c, 'rh/t', 'kept', { qos: 1, retain: true });
  const { pc } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'rh-sub'));
  let id = 1;
  /** SUBSCRIBE, then the retained messages sent for it (PINGRESP bounds them: they follow SUBACK at once). */
  const sub = async (topic: string, rh: number): Promise<string[]> => {
    const ack = await pc.subscribe([{ topic, qos: 1, rh }], id++);
    assert.deepEqual(ack.granted, [1]);
    const got = (await pc.ping()) as IPublishPacket[];
    for (const p of got) {
      assert.equal(p.cmd, 'publish');
      assert.equal(p.retain, true, 'retained on subscribe: RETAIN 1');
      pc.send({ cmd: 'puback', messageId: p.messageId! });
    }
    return got.map((p) => `${p.topic}=${p.payload.toString()}`);
  };
  // 0: sent at every subscribe, a re-subscribe included.
  assert.deepEqual(await sub('rh/+', 0), ['rh/t=kept']);
  assert.deepEqual(await sub('rh/+', 0), ['rh/t=kept'], 'RH 0: re-sent on a re-subscribe [MQTT-3.8.4-4]');
  // 1: only for a subscription that did not exist.
  assert.deepEqual(await sub('rh/#', 1), ['rh/t=kept'], 'RH 1, new subscription');
  assert.deepEqual(await sub('rh/#', 1), [], 'RH 1, existing subscription: not sent');
  pc.send({ cmd: 'unsubscribe', messageId: id++, unsubscriptions: ['rh/#'] });
  assert.deepEqual((await pc.expect('unsuback')).granted, [0]);
  assert.deepEqual(await sub('rh/#', 1), ['rh/t=kept'], 'RH 1 after UNSUBSCRIBE: new again');
  // 2: never.
  assert.deepEqual(await sub('rh/t', 2), [], 'RH 2: not sent to a new subscription');
  assert.deepEqual(await sub('rh/t', 2), [], 'RH 2: not sent to a re-subscribe');
  // Retain Handling 3 is a Protocol Error (§3.8.3.1).
  const { pc: bad } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'rh-bad'));
  bad.send(rawFrame(0x82, [0, 1], [0], mqttString('rh/t'), [0x30]));
  const d = await bad.expect('disconnect');
  assert.equal(d.reasonCode, 0x82);
  await bad.waitClosed();
});

test('Subscription Identifiers: sent with the message, all of them for overlapping subscriptions [MQTT-3.3.4-3] [MQTT-3.3.4-4]', {
  timeout: T,
}, async (t) => {
  const sub = await client5(t, broker, { clientId: idOnShard(broker, 0, 'sid-sub') });
  const pub = await client5(t, broker, { clientId: idOnShard(broker, 1, 'sid-pub') });
  assert.deepEqual(await subscribe5(sub.c, 'sid/+/x', { qos: 1, subscriptionIdentifier: 7 }), [1]);
  assert.deepEqual(await subscribe5(sub.c, 'sid/a/#', { qos: 1, subscriptionIdentifier: 300 }), [1]);
  assert.deepEqual(await subscribe5(sub.c, 'sid/a/x', { qos: 0 }), [0]);
  assert.deepEqual(await subscribe5(sub.c, 'sid/max', { qos: 1, subscriptionIdentifier: 268_435_455 }), [1]);
  await publish5(pub.c, 'sid/a/x', 'all', { qos: 1 });
  await publish5(pub.c, 'sid/b/x', 'seven', { qos: 1 });
  await publish5(pub.c, 'sid/a/y', 'three-hundred', { qos: 1 });
  await publish5(pub.c, 'sid/c', 'none', { qos: 1 });
  await publish5(pub.c, 'sid/max', 'max', { qos: 1 });
  const got = await sub.inbox.wait(4);
  // One copy for three overlapping subscriptions, with the identifiers of the two that have one.
  assert.deepEqual(
    got.map((p) => [p.payload.toString(), subIds(p)]),
    [
      ['all', [7, 300]],
      ['seven', [7]],
      ['three-hundred', [300]],
      ['max', [268_435_455]],
    ],
  );
  // A subscription replaced with a new identifier uses it [MQTT-3.8.4-3]; one without loses it.
  assert.deepEqual(await subscribe5(sub.c, 'sid/+/x', { qos: 1, subscriptionIdentifier: 8 }), [1]);
  assert.deepEqual(await subscribe5(sub.c, 'sid/a/#', { qos: 1 }), [1]);
  await publish5(pub.c, 'sid/a/x', 'replaced', { qos: 1 });
  const [replaced] = (await sub.inbox.wait(5)).slice(4);
  assert.deepEqual([replaced.payload.toString(), subIds(replaced)], ['replaced', [8]]);

  // The retained message sent on subscribe carries that subscription's identifier.
  await publish5(pub.c, 'sid/r/x', 'stored', { qos: 1, retain: true });
  assert.deepEqual(await subscribe5(sub.c, 'sid/r/+', { qos: 1, subscriptionIdentifier: 9 }), [1]);
  // The subscriber already matches sid/r/x through sid/+/x: the live copy (RETAIN 0, id 8)...
  const live = await waitForPacket(sub.inbox, (p) => p.payload.toString() === 'stored', 'live copy');
  assert.deepEqual([live.retain, subIds(live)], [false, [8]]);
  // ...then the retained one sent for the new subscription, with its identifier only.
  const stored = await waitForPacket(
    sub.inbox,
    (p) => p.payload.toString() === 'stored' && p.retain,
    'retained copy',
  );
  assert.deepEqual(subIds(stored), [9]);

  // On the wire (raw): the property is a Variable Byte Integer (id 0x0B), one per identifier.
  const { raw } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 0, 'sid-raw') });
  raw.send(rawFrame(0x82, [0, 1], props5([[0x0b, 16_384]]), mqttString('sid/w'), [1]));
  const suback = await readFrame(raw);
  assert.deepEqual([suback.type, [...suback.body]], [9, [0, 1, 0, 1]]);
  await publish5(pub.c, 'sid/w', 'wire', { qos: 0 });
  const w = parsePublish5(await readFrame(raw));
  assert.deepEqual([w.topic, w.payload.toString(), w.props], ['sid/w', 'wire', [[0x0b, 16_384]]]);
});

test('Subscription Identifier 0 is a Protocol Error: DISCONNECT 0x82 (§3.8.2.1.2)', {
  timeout: T,
}, async (t) => {
  const { pc } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'sid-zero'));
  pc.send(rawFrame(0x82, [0, 1], props5([[0x0b, 0]]), mqttString('sid0/t'), [0]));
  const d = await pc.expect('disconnect');
  assert.equal(d.reasonCode, 0x82);
  await pc.waitClosed();
});

test('SUBACK reason codes: granted QoS, 0x8F, 0xA2, 0x9E [MQTT-3.9.3-1] [MQTT-3.8.4-5]', {
  timeout: T,
}, async (t) => {
  const { pc } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'suback'));
  const all = await pc.subscribe([
    { topic: 'sa/0', qos: 0 },
    { topic: 'sa/1/+', qos: 1 },
    { topic: 'sa/2/#', qos: 2 },
    { topic: 'sa/#/x', qos: 1 },
    { topic: 'sa+', qos: 0 },
    { topic: '', qos: 0 },
    { topic: '$share/g+/sa', qos: 0 },
    { topic: '$share/g/sa', qos: 1 },
    { topic: 'sa/last', qos: 2 },
  ]);
  // One code per filter, in order; invalid filters 0x8F [MQTT-4.7.1-1] [MQTT-4.7.3-1], the rest granted.
  assert.deepEqual(all.granted, [0, 1, 2, 0x8f, 0x8f, 0x8f, 0x8f, 1, 2]);

  // Wildcard and shared subscriptions switched off (runtime options, as a reload applies them).
  await reconfigureShards(broker, { 'mqtt.wildcard_subscription': false, 'mqtt.shared_subscription': false });
  t.after(() =>
    reconfigureShards(broker, { 'mqtt.wildcard_subscription': true, 'mqtt.shared_subscription': true }),
  );
  const off = await pc.subscribe(
    [
      { topic: 'sa/w/+', qos: 1 },
      { topic: 'sa/w/#', qos: 1 },
      { topic: '$share/g/sa/s', qos: 1 },
      { topic: '$queue/sa/q', qos: 1 },
      { topic: 'sa/plain', qos: 1 },
      { topic: 'sa/#/bad', qos: 1 },
    ],
    2,
  );
  assert.deepEqual(off.granted, [0xa2, 0xa2, 0x9e, 0x9e, 1, 0x8f]);
  // The CONNACK says so (§3.2.2.3.12, §3.2.2.3.14): Wildcard / Shared Subscription Available 0.
  const { connack } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'suback-ca'));
  assert.equal(connack.properties?.wildcardSubscriptionAvailable, false);
  assert.equal(connack.properties?.sharedSubscriptionAvailable, false);
  assert.equal(connack.properties?.subscriptionIdentifiersAvailable, true);

  // An MQTT 3.1.1 client gets 0x80 Failure for the same refusals [MQTT-3.9.3-2 in 3.1.1].
  const { pc: v3 } = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'suback-v3'));
  v3.send({
    cmd: 'subscribe',
    messageId: 3,
    subscriptions: [
      { topic: 'sa/w/+', qos: 1 },
      { topic: '$share/g/sa/s', qos: 1 },
      { topic: 'sa/plain3', qos: 1 },
    ],
  });
  assert.deepEqual((await v3.expect('suback')).granted, [0x80, 0x80, 1]);
});

test('UNSUBACK: per filter 0x00 Success or 0x11 No subscription existed [MQTT-3.11.3-1] [MQTT-3.10.4-2]', {
  timeout: T,
}, async (t) => {
  const { pc } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'unsub'));
  const pub = await client5(t, broker, { clientId: idOnShard(broker, 0, 'unsub-pub') });
  assert.deepEqual(
    (
      await pc.subscribe([
        { topic: 'us/a', qos: 0 },
        { topic: 'us/+', qos: 0 },
      ])
    ).granted,
    [0, 0],
  );
  pc.send({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['us/a', 'us/x', 'us/+', 'us/a', 'us/#'] });
  const ack = await pc.expect('unsuback');
  assert.equal(ack.messageId, 2);
  assert.deepEqual(ack.granted, [0x00, 0x11, 0x00, 0x11, 0x11]);
  // Nothing more is delivered for the removed subscriptions: a later subscription's message is
  // the only one that arrives (both come from the same publisher, in order).
  assert.deepEqual((await pc.subscribe([{ topic: 'us-end', qos: 0 }], 3)).granted, [0]);
  await publish5(pub.c, 'us/a', 'gone', { qos: 1 });
  await publish5(pub.c, 'us-end', 'end', { qos: 1 });
  const p = await pc.expect('publish');
  assert.deepEqual([p.topic, p.payload.toString()], ['us-end', 'end']);
});

test('MQTT 3.1.1 and 5 subscribers get valid packets of their own version from one v5 PUBLISH with properties', {
  timeout: T,
}, async (t) => {
  const v3 = await rawConnected(t, broker, { clientId: idOnShard(broker, 1, 'mix-v3') });
  v3.send(rawFrame(0x82, [0, 1], mqttString('mix/#'), [1]));
  assert.deepEqual([...(await v3.read(5))], [0x90, 3, 0, 1, 1]);
  const { raw: v5 } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 1, 'mix-v5') });
  v5.send(rawFrame(0x82, [0, 1], props5([[0x0b, 5]]), mqttString('mix/#'), [1]));
  assert.deepEqual([...(await v5.read(6))], [0x90, 4, 0, 1, 0, 1]);
  const js = await client5(t, broker, { clientId: idOnShard(broker, 0, 'mix-js') });
  assert.deepEqual(await subscribe5(js.c, 'mix/+', { qos: 1 }), [1]);

  const { raw: pub } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 0, 'mix-pub') });
  const correlation = Buffer.from([0, 1, 2, 0xff]);
  const published: Prop5[] = [
    [0x01, 1],
    [0x02, 120],
    [0x26, ['k1', 'v1']],
    [0x03, 'text/plain'],
    [0x08, 'mix/reply'],
    [0x26, ['k2', 'v2']],
    [0x09, correlation],
    [0x26, ['k1', 'v3']],
  ];
  pub.send(publishFrame5({ topic: 'mix/t', payload: 'héllo', qos: 1, packetId: 9, props: published }));
  const puback = await readFrame(pub);
  assert.deepEqual([puback.type, [...puback.body]], [4, [0, 9]]);

  // MQTT 3.1.1: PUBLISH QoS 1 with topic, packet id and payload only: exactly the 3.1.1 layout.
  const f3 = await readFrame(v3);
  assert.equal(f3.type, 3);
  assert.equal(f3.flags, 0x02, 'QoS 1, DUP 0, RETAIN 0');
  const pid3 = f3.body.readUInt16BE(7);
  assert.ok(pid3 > 0);
  assert.deepEqual(
    f3.body,
    Buffer.concat([mqttString('mix/t'), Buffer.from([pid3 >> 8, pid3 & 0xff]), Buffer.from('héllo')]),
  );
  // MQTT 5: the publisher's properties unaltered and in order [MQTT-3.3.2-4] [MQTT-3.3.2-15]
  // [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20], the remaining expiry
  // [MQTT-3.3.2-6] and this subscription's identifier.
  const p5 = parsePublish5(await readFrame(v5));
  assert.deepEqual([p5.topic, p5.qos, p5.retain, p5.payload.toString()], ['mix/t', 1, false, 'héllo']);
  const expiry = p5.props.find(([id]) => id === 0x02);
  assert.ok(expiry && (expiry[1] as number) <= 120 && (expiry[1] as number) >= 100, `expiry ${expiry}`);
  assert.deepEqual(
    p5.props.filter(([id]) => id !== 0x02 && id !== 0x0b),
    published.filter(([id]) => id !== 0x02),
  );
  assert.deepEqual(
    p5.props.filter(([id]) => id === 0x0b),
    [[0x0b, 5]],
  );
  // And mqtt.js (MQTT 5, other shard) parses the same message.
  const [j] = await js.inbox.wait(1);
  const jp = { ...j.properties, userProperties: { ...j.properties?.userProperties } };
  assert.deepEqual(
    [j.topic, j.payload.toString(), j.qos, j.retain, jp],
    [
      'mix/t',
      'héllo',
      1,
      false,
      {
        payloadFormatIndicator: true,
        messageExpiryInterval: j.properties?.messageExpiryInterval,
        contentType: 'text/plain',
        responseTopic: 'mix/reply',
        correlationData: correlation,
        userProperties: { k1: ['v1', 'v3'], k2: 'v2' },
      },
    ],
  );
});

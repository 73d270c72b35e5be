/**
 * MQTT 5.0 PUBLISH (OASIS MQTT 5.0 §3.3-§3.7): reason codes on acks, payload format, properties
 * forwarded unaltered and in order, message expiry, topic aliases both ways, the client's Maximum
 * Packet Size and Receive Maximum, the server's Receive Maximum, Maximum QoS and Retain Available.
 * Publishers and subscribers sit on different shards, MQTT 3.1.1 and 5.0 mixed, unless a test says
 * otherwise. Exact wire checks use raw sockets (property order) or mqtt-packet's parser.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { IPublishPacket, Packet } from 'mqtt-packet';
import type { Broker } from '../src/broker/broker.js';
import {
  brokerPool,
  client,
  client5,
  Inbox,
  idOnShard,
  mqttString,
  PacketClient,
  type Prop5,
  parsePublish5,
  publish,
  publishFrame5,
  rawConnect5,
  rawConnected,
  rawFrame,
  readFrame,
  subscribe,
  subscribeFrame5,
  untilPast,
} from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

const RESTRICTED = { 'mqtt.max_qos_allowed': 1, 'mqtt.retain_available': false, 'mqtt.max_topic_alias': 4 };

/** A raw MQTT 5 client (parsed packets) on `shard`. */
async function v5(
  t: TestContext,
  broker: Broker,
  shard: number,
  name: string,
  properties: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
) {
  const { pc, connack } = await PacketClient.connect(t, broker, idOnShard(broker, shard, name), {
    protocolVersion: 5,
    properties,
    ...extra,
  });
  assert.equal(connack.reasonCode, 0);
  return pc;
}

/** Publishes through a raw client and returns its ack (PUBACK for QoS 1, PUBREC for QoS 2). */
async function rawPublish(pc: PacketClient, p: Omit<IPublishPacket, 'cmd' | 'dup'> & { dup?: boolean }) {
  pc.send({ cmd: 'publish', dup: false, ...p } as IPublishPacket);
  return pc.next();
}

/** Reads packets until a PUBLISH on `topic` arrives; returns the ones before it and it. */
async function readUntil(
  pc: PacketClient,
  topic: string,
): Promise<{ before: Packet[]; marker: IPublishPacket }> {
  const before: Packet[] = [];
  for (;;) {
    const p = await pc.next();
    if (p.cmd === 'publish' && p.topic === topic) return { before, marker: p };
    before.push(p);
  }
}

function publishes(ps: readonly Packet[]): IPublishPacket[] {
  return ps.filter((p): p is IPublishPacket => p.cmd === 'publish');
}

test('PUBACK / PUBREC carry 0x10 No matching subscribers when nothing matched, success otherwise [MQTT-3.4.2-1], [MQTT-3.5.2-1]', async (t) => {
  const broker = await shared();
  const pub = await v5(t, broker, 0, 'rc-pub');
  let ack = await rawPublish(pub, { topic: 'rc/none', payload: 'x', qos: 1, retain: false, messageId: 1 });
  assert.deepEqual(
    [ack.cmd, ack.messageId, (ack as { reasonCode?: number }).reasonCode],
    ['puback', 1, 0x10],
  );
  ack = await rawPublish(pub, { topic: 'rc/none', payload: 'x', qos: 2, retain: false, messageId: 2 });
  assert.deepEqual(
    [ack.cmd, ack.messageId, (ack as { reasonCode?: number }).reasonCode],
    ['pubrec', 2, 0x10],
  );
  pub.send({ cmd: 'pubrel', messageId: 2 });
  const comp = await pub.expect('pubcomp');
  assert.deepEqual([comp.messageId, comp.length], [2, 2]); // success: no reason code byte

  // A 3.1.1 subscriber on the other shard: now the same PUBLISH gets the short success form
  // (reason 0x00 and no properties may be omitted, §3.4.2.1).
  const sub = await client(t, broker, { clientId: idOnShard(broker, 1, 'rc-sub') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'rc/some', 2);
  ack = await rawPublish(pub, { topic: 'rc/some', payload: 'q1', qos: 1, retain: false, messageId: 3 });
  assert.deepEqual([ack.cmd, ack.messageId, ack.length], ['puback', 3, 2]); // no reason code byte
  ack = await rawPublish(pub, { topic: 'rc/some', payload: 'q2', qos: 2, retain: false, messageId: 4 });
  assert.deepEqual([ack.cmd, ack.messageId, ack.length], ['pubrec', 4, 2]);
  const got = await inbox.wait(2);
  assert.deepEqual(
    got.map((m) => [m.topic, m.payload, m.qos]),
    [
      ['rc/some', 'q1', 1],
      ['rc/some', 'q2', 2],
    ],
  );
});

test('Payload Format Indicator 1 with invalid UTF-8: PUBACK/PUBREC 0x99, QoS 0 gets DISCONNECT 0x99; valid ones are forwarded with the indicator [MQTT-3.3.2-4]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await client5(t, broker, { clientId: idOnShard(broker, 1, 'pf-sub') });
  await new Promise<void>((resolve, reject) =>
    sub.c.subscribe('pf/#', { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
  const pub = await v5(t, broker, 0, 'pf-pub');
  const bad = Buffer.from([0x61, 0xff, 0xfe]);
  const pfi = { payloadFormatIndicator: true };
  let ack = await rawPublish(pub, {
    topic: 'pf/bad',
    payload: bad,
    qos: 1,
    retain: false,
    messageId: 1,
    properties: pfi,
  });
  assert.deepEqual(
    [ack.cmd, ack.messageId, (ack as { reasonCode?: number }).reasonCode],
    ['puback', 1, 0x99],
  );
  ack = await rawPublish(pub, {
    topic: 'pf/bad',
    payload: bad,
    qos: 2,
    retain: false,
    messageId: 2,
    properties: pfi,
  });
  assert.deepEqual(
    [ack.cmd, ack.messageId, (ack as { reasonCode?: number }).reasonCode],
    ['pubrec', 2, 0x99],
  );
  // The same bytes without the indicator are just binary; valid UTF-8 with it is forwarded.
  ack = await rawPublish(pub, { topic: 'pf/bin', payload: bad, qos: 1, retain: false, messageId: 3 });
  assert.equal(ack.length, 2);
  ack = await rawPublish(pub, {
    topic: 'pf/text',
    payload: 'héllo',
    qos: 1,
    retain: false,
    messageId: 4,
    properties: pfi,
  });
  assert.equal(ack.length, 2);
  const got = await sub.inbox.wait(2);
  // In publish order: the refused ones before them were not routed.
  assert.deepEqual(
    got.map((p) => [p.topic, p.payload.toString('hex'), p.properties?.payloadFormatIndicator]),
    [
      ['pf/bin', bad.toString('hex'), undefined],
      ['pf/text', Buffer.from('héllo').toString('hex'), true],
    ],
  );
  pub.send({
    cmd: 'publish',
    topic: 'pf/bad',
    payload: bad,
    qos: 0,
    retain: false,
    dup: false,
    properties: pfi,
  });
  const d = await pub.expect('disconnect');
  assert.equal(d.reasonCode, 0x99);
  await pub.waitClosed();
  assert.equal(broker.counters.snapshot().packetsPublishDropped - base.packetsPublishDropped, 2);
});

test('properties reach v5 subscribers unaltered and in order (user properties interleaved), minus Topic Alias; 3.1.1 subscribers get a plain 3.1.1 PUBLISH [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18], [MQTT-3.3.2-20]', async (t) => {
  const broker = await shared();
  const topic = 'fw/props';
  const subs5 = [];
  const subs3 = [];
  for (const shard of [0, 1]) {
    const { raw } = await rawConnect5(t, broker, { clientId: idOnShard(broker, shard, 'fw-v5') });
    raw.send(subscribeFrame5(1, topic, 1));
    assert.deepEqual([...(await readFrame(raw)).body], [0, 1, 0, 1]);
    subs5.push(raw);
    const r3 = await rawConnected(t, broker, { clientId: idOnShard(broker, shard, 'fw-v3') });
    r3.send(rawFrame(0x82, [0, 1], mqttString(topic), [1]));
    assert.deepEqual([...(await readFrame(r3)).body], [0, 1, 1]);
    subs3.push(r3);
  }
  const js = await client5(t, broker, { clientId: idOnShard(broker, 1, 'fw-js') });
  await new Promise<void>((resolve, reject) =>
    js.c.subscribe(topic, { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );

  const forwarded: Prop5[] = [
    [0x26, ['a', '1']],
    [0x03, 'text/plain'],
    [0x26, ['b', '2']],
    [0x08, 'fw/reply'],
    [0x09, Buffer.from([0, 1, 2, 0xff])],
    [0x26, ['a', '3']],
    [0x01, 1],
  ];
  // Message Expiry and Topic Alias sit between them on the way in: per hop, not forwarded as is.
  const sent: Prop5[] = [
    ...forwarded.slice(0, 2),
    [0x02, 600],
    ...forwarded.slice(2, 5),
    [0x23, 3],
    ...forwarded.slice(5),
  ];
  const { raw: pub } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 0, 'fw-pub') });
  pub.send(publishFrame5({ topic, payload: 'data', qos: 1, packetId: 9, props: sent }));
  const ack = await readFrame(pub);
  assert.deepEqual([ack.type, [...ack.body]], [4, [0, 9]]);

  for (const raw of subs5) {
    const p = parsePublish5(await readFrame(raw));
    assert.deepEqual(
      [p.topic, p.qos, p.retain, p.dup, p.packetId, p.payload.toString()],
      [topic, 1, false, false, 1, 'data'],
    );
    // The broker puts the remaining expiry first [MQTT-3.3.2-6]; the rest follows in the order sent.
    const [first, ...rest] = p.props;
    assert.equal(first[0], 0x02);
    assert.ok((first[1] as number) <= 600 && (first[1] as number) >= 590, `expiry ${first[1]}`);
    assert.deepEqual(rest, forwarded);
  }
  for (const raw of subs3) {
    const f = await readFrame(raw);
    // 3.1.1 PUBLISH: topic, packet id, payload; no property block.
    assert.deepEqual([f.type, f.flags], [3, 0x02]);
    assert.deepEqual(f.body, Buffer.concat([mqttString(topic), Buffer.from([0, 1]), Buffer.from('data')]));
  }
  const [m] = await js.inbox.wait(1);
  const props = m.properties!;
  assert.deepEqual(
    {
      ...props,
      userProperties: { ...props.userProperties },
      messageExpiryInterval: undefined,
    },
    {
      userProperties: { a: ['1', '3'], b: '2' },
      contentType: 'text/plain',
      responseTopic: 'fw/reply',
      correlationData: Buffer.from([0, 1, 2, 0xff]),
      payloadFormatIndicator: true,
      messageExpiryInterval: undefined,
    },
  );
});

test('message expiry: a queued message that expired is not delivered; an unexpired one arrives with the remaining interval [MQTT-3.3.2-5], [MQTT-3.3.2-6]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const subId = idOnShard(broker, 1, 'exp-sub');
  const session = { protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 60 } } as const;
  const first = await PacketClient.connect(t, broker, subId, { ...session, clean: true });
  await first.pc.subscribe('exp/q', 1);
  first.pc.send({ cmd: 'disconnect' });
  await first.pc.waitClosed();

  const pub = await v5(t, broker, 0, 'exp-pub');
  let ack = await rawPublish(pub, {
    topic: 'exp/q',
    payload: 'short',
    qos: 1,
    retain: false,
    messageId: 1,
    properties: { messageExpiryInterval: 1 },
  });
  assert.deepEqual([ack.cmd, ack.length], ['puback', 2]); // the offline session matched
  ack = await rawPublish(pub, {
    topic: 'exp/q',
    payload: 'long',
    qos: 1,
    retain: false,
    messageId: 2,
    properties: { messageExpiryInterval: 100 },
  });
  // Both were received before this PUBACK: a second after it, "short" has expired and "long"
  // has been queued for at least a second.
  const longAckedAt = Date.now();
  assert.equal(ack.cmd, 'puback');
  ack = await rawPublish(pub, { topic: 'exp/q', payload: 'forever', qos: 1, retain: false, messageId: 3 });
  assert.equal(ack.cmd, 'puback');

  await untilPast(longAckedAt + 1000, 'the 1 s message expiry');
  const { pc, connack } = await PacketClient.connect(t, broker, subId, session);
  assert.equal(connack.sessionPresent, true);
  const long = await pc.expect('publish');
  const forever = await pc.expect('publish');
  assert.deepEqual(await pc.ping(), []);
  assert.deepEqual([long.payload.toString(), forever.payload.toString()], ['long', 'forever']);
  const left = long.properties?.messageExpiryInterval as number;
  assert.ok(left >= 90 && left <= 99, `remaining expiry ${left} (sent 100, queued ≥ 1 s)`);
  assert.equal(forever.properties?.messageExpiryInterval, undefined);
  assert.equal(broker.counters.snapshot().deliveryDroppedExpired - base.deliveryDroppedExpired, 1);
});

test('a retained message with a Message Expiry Interval is not sent to new subscribers once expired [MQTT-3.3.2-5], [MQTT-3.3.2-6]', async (t) => {
  const broker = await shared();
  const pub = await v5(t, broker, 0, 'rexp-pub');
  const retained = async (topic: string, id: number, expiry?: number) => {
    const ack = await rawPublish(pub, {
      topic,
      payload: topic,
      qos: 1,
      retain: true,
      messageId: id,
      properties: expiry === undefined ? {} : { messageExpiryInterval: expiry },
    });
    assert.equal(ack.cmd, 'puback');
  };
  await retained('rexp/long', 2, 100);
  await retained('rexp/none', 3);
  // Connected first, so that it subscribes one round trip after the 1 s message is stored.
  const early = await v5(t, broker, 1, 'rexp-early');
  await retained('rexp/short', 1, 1);
  const shortAckedAt = Date.now();
  t.after(async () => {
    for (const [i, topic] of ['rexp/short', 'rexp/long', 'rexp/none'].entries()) {
      pub.send({ cmd: 'publish', topic, payload: '', qos: 0, retain: true, dup: false, messageId: 10 + i });
    }
  });

  await early.subscribe('rexp/+', 1);
  const before = publishes(await early.ping()).sort((a, b) => a.topic.localeCompare(b.topic));
  assert.deepEqual(
    before.map((p) => [p.topic, p.retain, p.properties?.messageExpiryInterval]),
    [
      ['rexp/long', true, before[0].properties?.messageExpiryInterval],
      ['rexp/none', true, undefined],
      ['rexp/short', true, 1], // the remaining time, rounded up
    ],
  );
  const longLeft = before[0].properties?.messageExpiryInterval as number;
  assert.ok(longLeft >= 99 && longLeft <= 100, `remaining expiry ${longLeft}`);

  await untilPast(shortAckedAt + 1000, 'the 1 s retained message expiry');
  const late = await v5(t, broker, 0, 'rexp-late');
  await late.subscribe('rexp/+', 1);
  const after = publishes(await late.ping()).sort((a, b) => a.topic.localeCompare(b.topic));
  assert.deepEqual(
    after.map((p) => [p.topic, p.retain]),
    [
      ['rexp/long', true],
      ['rexp/none', true],
    ],
  );
  const left = after[0].properties?.messageExpiryInterval as number;
  assert.ok(left >= 90 && left <= 99, `remaining expiry ${left}`);
});

test('inbound Topic Alias: set, reused with an empty topic, remapped; above the maximum → DISCONNECT 0x94; unknown → 0x82; not carried to a new connection [MQTT-3.3.2-7], [MQTT-3.3.2-8], [MQTT-3.3.2-9], [MQTT-3.3.2-12]', async (t) => {
  const broker = await shared(RESTRICTED);
  const v3 = await client(t, broker, { clientId: idOnShard(broker, 1, 'ta-v3') });
  const v3Inbox = new Inbox(v3);
  await subscribe(v3, 'ta/#', 1);
  const sub5 = await v5(t, broker, 0, 'ta-v5');
  await sub5.subscribe('ta/#', 1);

  const pubId = idOnShard(broker, 0, 'ta-pub');
  const { pc: pub, connack } = await PacketClient.connect(t, broker, pubId, { protocolVersion: 5 });
  assert.equal(connack.properties?.topicAliasMaximum, 4);
  const steps: [string, number, string][] = [
    ['ta/a', 1, 'm1'],
    ['', 1, 'm2'],
    ['ta/b', 2, 'm3'],
    ['', 2, 'm4'],
    ['ta/c', 1, 'm5'], // remaps alias 1
    ['', 1, 'm6'],
    ['ta/d', 4, 'm7'], // the maximum itself is accepted
    ['', 4, 'm8'],
  ];
  for (const [i, [topic, alias, payload]] of steps.entries()) {
    pub.send(publishFrame5({ topic, payload, qos: 1, packetId: i + 1, props: [[0x23, alias]] }));
    const ack = await pub.expect('puback');
    assert.deepEqual([ack.messageId, ack.length], [i + 1, 2]);
  }
  const expected = [
    ['ta/a', 'm1'],
    ['ta/a', 'm2'],
    ['ta/b', 'm3'],
    ['ta/b', 'm4'],
    ['ta/c', 'm5'],
    ['ta/c', 'm6'],
    ['ta/d', 'm7'],
    ['ta/d', 'm8'],
  ];
  assert.deepEqual(
    (await v3Inbox.wait(8)).map((m) => [m.topic, m.payload]),
    expected,
  );
  const got5: IPublishPacket[] = [];
  for (let i = 0; i < 8; i++) got5.push(await sub5.expect('publish'));
  assert.deepEqual(
    got5.map((p) => [p.topic, p.payload.toString()]),
    expected,
  );
  // The subscriber set no Topic Alias Maximum: the broker sends it none [MQTT-3.1.2-27].
  assert.ok(got5.every((p) => p.properties?.topicAlias === undefined));

  pub.send(publishFrame5({ topic: 'ta/e', payload: 'x', qos: 0, props: [[0x23, 5]] }));
  assert.equal((await pub.expect('disconnect')).reasonCode, 0x94);
  await pub.waitClosed();

  const cases: [string, Buffer, number][] = [
    // A new connection has no aliases: alias 1 from before is unknown here [MQTT-3.3.2-7].
    [
      'alias of the previous connection',
      publishFrame5({ topic: '', payload: 'x', props: [[0x23, 1]] }),
      0x82,
    ],
    ['never-set alias', publishFrame5({ topic: '', payload: 'x', props: [[0x23, 3]] }), 0x82],
    ['alias 0', publishFrame5({ topic: 'ta/z', payload: 'x', props: [[0x23, 0]] }), 0x94],
    ['empty topic without alias', publishFrame5({ topic: '', payload: 'x' }), 0x82],
  ];
  for (const [what, frame, code] of cases) {
    const { pc } = await PacketClient.connect(t, broker, pubId, { protocolVersion: 5 });
    pc.send(frame);
    const d = await pc.expect('disconnect');
    assert.equal(d.reasonCode, code, what);
    await pc.waitClosed();
  }
  // None of the refused ones reached a subscriber.
  assert.deepEqual(await sub5.ping(), []);
});

test('outbound Topic Alias: up to the client maximum, later deliveries of a topic carry the alias and an empty topic [MQTT-3.3.2-11], [MQTT-3.1.2-26], [MQTT-3.1.2-27]', async (t) => {
  const broker = await shared();
  const withAliases = await v5(t, broker, 1, 'oa-sub', { topicAliasMaximum: 2 });
  await withAliases.subscribe('oa/#', 1);
  const without = await v5(t, broker, 0, 'oa-plain');
  await without.subscribe('oa/#', 1);
  // mqtt.js resolves the aliases it is sent: it sees full topics.
  const js = await client5(t, broker, {
    clientId: idOnShard(broker, 0, 'oa-js'),
    properties: { topicAliasMaximum: 2 },
  });
  await new Promise<void>((resolve, reject) =>
    js.c.subscribe('oa/#', { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
  const jsTopics: string[] = [];
  js.c.on('message', (topic) => jsTopics.push(topic));
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'oa-pub') });
  const topics = ['oa/1', 'oa/1', 'oa/2', 'oa/2', 'oa/3', 'oa/3', 'oa/1'];
  for (const [i, topic] of topics.entries()) await publish(pub, topic, `m${i}`, { qos: i % 2 ? 0 : 1 });

  const got: IPublishPacket[] = [];
  for (let i = 0; i < topics.length; i++) got.push(await withAliases.expect('publish'));
  assert.deepEqual(
    got.map((p) => [p.topic, p.properties?.topicAlias, p.payload.toString()]),
    [
      ['oa/1', 1, 'm0'],
      ['', 1, 'm1'],
      ['oa/2', 2, 'm2'],
      ['', 2, 'm3'],
      ['oa/3', undefined, 'm4'], // no alias left: full topic, no alias
      ['oa/3', undefined, 'm5'],
      ['', 1, 'm6'],
    ],
  );
  const plain: IPublishPacket[] = [];
  for (let i = 0; i < topics.length; i++) plain.push(await without.expect('publish'));
  assert.deepEqual(
    plain.map((p) => [p.topic, p.properties?.topicAlias]),
    topics.map((tp) => [tp, undefined]),
  );
  await js.inbox.wait(topics.length);
  assert.deepEqual(jsTopics, topics);
});

test("the client's Maximum Packet Size: larger messages are not sent (counted) and do not hold an inflight slot; nor is a larger DISCONNECT sent [MQTT-3.1.2-24], [MQTT-3.1.2-25]", async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  // Receive Maximum 1: a dropped QoS 1 message that kept its slot would block the ones after it.
  const sub = await v5(t, broker, 1, 'mps-sub', { maximumPacketSize: 128, receiveMaximum: 1 });
  await sub.subscribe('mps/#', 1);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'mps-pub') });
  // v5 PUBLISH to 'mps/x' at QoS 1 without properties: 12 bytes + payload.
  const sizes: [string, number][] = [
    ['mps/a', 50],
    ['mps/b', 200],
    ['mps/c', 116], // exactly 128 bytes
    ['mps/d', 117], // 129 bytes
    ['mps/e', 10],
  ];
  for (const [topic, n] of sizes) await publish(pub, topic, Buffer.alloc(n, 0x61), { qos: 1 });
  const got: [string, number][] = [];
  for (let i = 0; i < 3; i++) {
    const p = await sub.expect('publish');
    assert.ok(p.length! + 2 <= 128, `${p.topic}: ${p.length! + 2} bytes`);
    got.push([p.topic, p.payload.length]);
    sub.send({ cmd: 'puback', messageId: p.messageId });
  }
  assert.deepEqual(got, [
    ['mps/a', 50],
    ['mps/c', 116],
    ['mps/e', 10],
  ]);
  assert.deepEqual(await sub.ping(), []);
  assert.equal(broker.counters.snapshot().deliveryDroppedTooLarge - base.deliveryDroppedTooLarge, 2);

  // A DISCONNECT for a protocol error (second CONNECT) must fit too: its Reason String is left out.
  const { raw } = await rawConnect5(t, broker, {
    clientId: idOnShard(broker, 0, 'mps-small'),
    props: [[0x27, 20]],
  });
  raw.send(rawFrame(0x10, mqttString('MQTT'), [5, 2, 0, 60, 0], mqttString('again')));
  const f = await readFrame(raw);
  const total = 2 + f.body.length;
  assert.equal(f.type, 14);
  assert.equal(f.body[0], 0x82);
  assert.ok(total <= 20, `DISCONNECT of ${total} bytes to a client accepting 20`);
  await raw.waitClosed();
});

test("the client's Receive Maximum: never more unacknowledged QoS 1 deliveries than it allows [MQTT-3.3.4-9], [MQTT-3.3.4-10]", async (t) => {
  const broker = await shared();
  const sub = await v5(t, broker, 1, 'crm-sub', { receiveMaximum: 2 });
  await sub.subscribe('crm/#', 1);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'crm-pub') });
  for (let i = 1; i <= 5; i++) await publish(pub, 'crm/q', `m${i}`, { qos: 1 });
  // A QoS 0 message published after them is not held by the window [MQTT-3.3.4-10]: when it has
  // arrived, the broker has handled all five.
  await publish(pub, 'crm/marker', 'after', { qos: 0 });
  const { before } = await readUntil(sub, 'crm/marker');
  const inflight = publishes(before);
  assert.deepEqual(
    inflight.map((p) => p.payload.toString()),
    ['m1', 'm2'],
  );
  assert.deepEqual(await sub.ping(), []);
  sub.send({ cmd: 'puback', messageId: inflight[0].messageId });
  const third = await sub.expect('publish');
  assert.equal(third.payload.toString(), 'm3');
  assert.deepEqual(await sub.ping(), []);
  sub.send({ cmd: 'puback', messageId: inflight[1].messageId });
  sub.send({ cmd: 'puback', messageId: third.messageId });
  const rest = [await sub.expect('publish'), await sub.expect('publish')];
  assert.deepEqual(
    rest.map((p) => p.payload.toString()),
    ['m4', 'm5'],
  );
  assert.deepEqual(await sub.ping(), []);
});

test("more unreleased QoS 2 PUBLISHes than the broker's Receive Maximum → DISCONNECT 0x93 [MQTT-3.3.4-7]", async (t) => {
  const broker = await shared();
  const pub = await v5(t, broker, 1, 'srm-pub');
  for (let id = 1; id <= 32; id++) {
    pub.send({
      cmd: 'publish',
      topic: 'srm/t',
      payload: 'x',
      qos: 2,
      retain: false,
      dup: false,
      messageId: id,
    });
  }
  for (let id = 1; id <= 32; id++) assert.equal((await pub.expect('pubrec')).messageId, id);
  // Releasing one makes room for exactly one more.
  pub.send({ cmd: 'pubrel', messageId: 1 });
  assert.equal((await pub.expect('pubcomp')).messageId, 1);
  pub.send({
    cmd: 'publish',
    topic: 'srm/t',
    payload: 'x',
    qos: 2,
    retain: false,
    dup: false,
    messageId: 33,
  });
  assert.equal((await pub.expect('pubrec')).messageId, 33);
  pub.send({
    cmd: 'publish',
    topic: 'srm/t',
    payload: 'x',
    qos: 2,
    retain: false,
    dup: false,
    messageId: 34,
  });
  assert.equal((await pub.expect('disconnect')).reasonCode, 0x93);
  await pub.waitClosed();
});

test('QoS above Maximum QoS → DISCONNECT 0x9B; RETAIN without Retain Available → DISCONNECT 0x9A; SUBSCRIBE QoS 2 still accepted [MQTT-3.2.2-10], [MQTT-3.2.2-11], [MQTT-3.2.2-14]', async (t) => {
  const broker = await shared(RESTRICTED);
  const sub = await v5(t, broker, 1, 'lim-sub');
  const suback = await sub.subscribe('lim/#', 2);
  assert.deepEqual(suback.granted, [1]);
  for (const [shard, p, code] of [
    [0, { topic: 'lim/q2', payload: 'x', qos: 2, retain: false, messageId: 1 }, 0x9b],
    [1, { topic: 'lim/r', payload: 'x', qos: 0, retain: true }, 0x9a],
    [0, { topic: 'lim/r1', payload: 'x', qos: 1, retain: true, messageId: 2 }, 0x9a],
  ] as const) {
    const pub = await v5(t, broker, shard, `lim-pub-${code}-${p.qos}`);
    pub.send({ cmd: 'publish', dup: false, ...p });
    assert.equal((await pub.expect('disconnect')).reasonCode, code);
    await pub.waitClosed();
  }
  assert.deepEqual(await sub.ping(), []);
});

test('PUBREL for an unknown packet id: PUBCOMP 0x92 Packet Identifier not found (3.1.1: plain PUBCOMP) [MQTT-3.7.2-1]', async (t) => {
  const broker = await shared();
  const pub = await v5(t, broker, 0, 'rel-v5');
  pub.send({ cmd: 'pubrel', messageId: 77 });
  const comp = await pub.expect('pubcomp');
  assert.deepEqual([comp.messageId, comp.reasonCode], [77, 0x92]);
  // A known one is released normally.
  pub.send({ cmd: 'publish', topic: 'rel/t', payload: 'x', qos: 2, retain: false, dup: false, messageId: 5 });
  assert.equal((await pub.expect('pubrec')).messageId, 5);
  pub.send({ cmd: 'pubrel', messageId: 5 });
  const ok = await pub.expect('pubcomp');
  assert.deepEqual([ok.messageId, ok.length], [5, 2]); // success: no reason code byte

  const v3 = await rawConnected(t, broker, { clientId: idOnShard(broker, 1, 'rel-v3') });
  v3.send([0x62, 2, 0, 77]);
  const f = await readFrame(v3);
  assert.deepEqual([f.type, [...f.body]], [7, [0, 77]]);
});

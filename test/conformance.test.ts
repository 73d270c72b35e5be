/**
 * Conformance details found by an independent, byte-level broker test suite (issue #15): each
 * test speaks raw packets over TCP and cites the statement it checks.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import { Counter } from '../src/metrics/counters.js';
import {
  brokerPool,
  connectFrame,
  idOnShard,
  mqttString,
  PacketClient,
  PacketClient5,
  parseFrame5,
  publishFrame5,
  RawClient,
  rawConnect5,
  rawFrame,
  readFrame,
  subscribeFrame5,
} from './helpers/broker.js';

const shared = brokerPool();
/** Small Topic Alias Maximum, so that max + 1 fits in the property's two bytes. */
const ALIAS2 = { 'mqtt.max_topic_alias': 2 };

const shardCounter = (broker: Broker, s: number, c: number): number => broker.counters.get(s + 1, c);

/** A persistent subscriber with `version` and a publisher on its shard (so routing is synchronous with PUBACK). */
async function persistentPair(
  t: TestContext,
  broker: Broker,
  tag: string,
  version: 4 | 5,
): Promise<{ id: string; topic: string; sub: PacketClient; pub: PacketClient }> {
  const id = idOnShard(broker, 0, `${tag}-sub`);
  const opts =
    version === 5 ? { clean: false, properties: { sessionExpiryInterval: 300 } } : { clean: false };
  const sub = (version === 5 ? PacketClient5 : PacketClient).connect(t, broker, id, opts);
  const { pc } = await sub;
  const topic = `${tag}/t`;
  assert.deepEqual((await pc.subscribe(topic, 1)).granted, [1]);
  const { pc: pub } = await PacketClient.connect(t, broker, idOnShard(broker, 0, `${tag}-pub`));
  return { id, topic, sub: pc, pub };
}

for (const version of [4, 5] as const) {
  test(`v${version}: a queued QoS 1 message is first sent with DUP 0; a re-delivery of one sent has DUP 1 [MQTT-3.3.1-1]`, async (t) => {
    const broker = await shared();
    const { id, topic, sub, pub } = await persistentPair(t, broker, `dup${version}`, version);
    const reconnect = (): Promise<{ pc: PacketClient }> =>
      version === 5
        ? PacketClient5.connect(t, broker, id, { clean: false, properties: { sessionExpiryInterval: 300 } })
        : PacketClient.connect(t, broker, id, { clean: false });

    // Offline: the message is queued, never sent.
    sub.send({ cmd: 'disconnect' });
    await sub.waitClosed();
    pub.send({
      cmd: 'publish',
      topic,
      payload: Buffer.from('queued'),
      qos: 1,
      messageId: 1,
      dup: false,
      retain: false,
    });
    await pub.expect('puback');
    const back = await reconnect();
    const first = await back.pc.expect('publish');
    assert.equal(first.payload.toString(), 'queued');
    assert.equal(first.dup, false, 'first delivery of a queued message must have DUP 0 [MQTT-3.3.1-1]');

    // Not acknowledged, connection lost: it was sent, so the re-delivery has DUP 1 and the same id.
    await back.pc.destroy();
    const again = await reconnect();
    const resent = await again.pc.expect('publish');
    assert.equal(resent.payload.toString(), 'queued');
    assert.equal(resent.dup, true, 're-delivery of a sent PUBLISH has DUP 1 [MQTT-3.3.1-1]');
    assert.equal(resent.messageId, first.messageId);
    again.pc.send({ cmd: 'puback', messageId: resent.messageId });
    // Completed: a further message is a first delivery again.
    pub.send({
      cmd: 'publish',
      topic,
      payload: Buffer.from('live'),
      qos: 1,
      messageId: 2,
      dup: false,
      retain: false,
    });
    const live = await again.pc.expect('publish');
    assert.deepEqual([live.payload.toString(), live.dup], ['live', false]);
  });
}

test('MQTT 3.1: CONNACK has no Session Present flag, byte 1 is 0 even for a resumed session (MQTT 3.1 §3.2)', async (t) => {
  const broker = await shared();
  const id = 'v31-resume';
  for (let i = 0; i < 2; i++) {
    const raw = await RawClient.connect(t, broker.port);
    raw.send(connectFrame({ name: 'MQIsdp', level: 3, clientId: id, clean: false }));
    assert.equal((await raw.read(4)).toString('hex'), '20020000', `CONNACK ${i}`);
    raw.send([0xe0, 0]);
    await raw.waitClosed();
  }
  // The same with MQTT 3.1.1 says the session is present [MQTT-3.2.2-2].
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame({ level: 4, clientId: id, clean: false }));
  assert.equal((await raw.read(4)).toString('hex'), '20020100');
});

test('MQTT 3.1: a zero-length or missing client id is refused with return code 2 (3.1 requires 1-23 characters)', async (t) => {
  const broker = await shared();
  const missing = rawFrame(0x10, mqttString('MQIsdp'), [3, 0x02, 0, 60]);
  for (const frame of [connectFrame({ name: 'MQIsdp', level: 3, clientId: '' }), missing]) {
    const raw = await RawClient.connect(t, broker.port);
    raw.send(frame);
    assert.equal((await raw.read(4)).toString('hex'), '20020002');
    await raw.waitClosed();
  }
});

test('v5: a PUBLISH topic that is not valid UTF-8 is a Malformed Packet: DISCONNECT 0x81 [MQTT-1.5.4-1]', async (t) => {
  const broker = await shared();
  for (const bad of [
    [0x61, 0xff],
    [0xed, 0xa0, 0x80], // an encoded surrogate
    [0xc0, 0xaf], // overlong
    [0x61, 0x00], // U+0000 [MQTT-1.5.4-2]
  ]) {
    const { raw } = await rawConnect5(t, broker, { clientId: `utf8-${bad.join('-')}` });
    raw.send(publishFrame5({ topic: Buffer.from(bad), payload: 'x' }));
    const f = await readFrame(raw);
    assert.equal(f.type, 14, 'DISCONNECT');
    assert.equal(f.body[0], 0x81, `topic ${Buffer.from(bad).toString('hex')}`);
    await raw.waitClosed();
  }
});

for (const qos of [1, 2] as const) {
  test(`v5 Maximum Packet Size 20: an oversize QoS ${qos} PUBLISH is not sent, is treated as delivered, and a small one follows [MQTT-3.1.2-25]`, async (t) => {
    const broker = await shared();
    const dropped = shardCounter(broker, 0, Counter.deliveryDroppedTooLarge);
    const { raw, frame: connackFrame } = await rawConnect5(t, broker, {
      clientId: idOnShard(broker, 0, `maxpkt-${qos}`),
      props: [[0x27, 20]],
    });
    assert.equal(connackFrame.body[1], 0);
    // Every packet to this client, the CONNACK too, fits in its 20 bytes [MQTT-3.1.2-24].
    assert.ok(connackFrame.body.length + 2 <= 20, `CONNACK of ${connackFrame.body.length + 2} bytes`);
    raw.send(subscribeFrame5(1, 'test/topic', qos));
    assert.equal((await readFrame(raw)).type, 9, 'SUBACK');
    const ack = async (id: number): Promise<void> => {
      if (qos === 1) {
        const f = await readFrame(raw);
        assert.deepEqual([f.type, f.body.readUInt16BE(0)], [4, id], 'PUBACK');
        return;
      }
      const rec = await readFrame(raw);
      assert.deepEqual([rec.type, rec.body.readUInt16BE(0)], [5, id], 'PUBREC');
      raw.send(rawFrame(0x62, [id >> 8, id & 0xff]));
      const comp = await readFrame(raw);
      assert.deepEqual([comp.type, comp.body.readUInt16BE(0)], [7, id], 'PUBCOMP');
    };
    raw.send(
      publishFrame5({ topic: 'test/topic', payload: 'this does not fit in 20 bytes', qos, packetId: 1 }),
    );
    await ack(1);
    // 2 + 12 + 2 + 1 + 2 = 19 bytes: fits.
    raw.send(publishFrame5({ topic: 'test/topic', payload: 'ok', qos, packetId: 2 }));
    // The small message may come before or after our ack; the big one never.
    const frames = [await readFrame(raw), await readFrame(raw)];
    const pub = frames.find((f) => f.type === 3);
    assert.ok(pub, `no PUBLISH among ${frames.map((f) => f.type)}`);
    const p = parseFrame5(pub);
    assert.equal(p.cmd, 'publish');
    if (p.cmd === 'publish') assert.equal(p.payload.toString(), 'ok');
    assert.ok(
      frames.some((f) => f.type === (qos === 1 ? 4 : 5) && f.body.readUInt16BE(0) === 2),
      'ack of the small PUBLISH',
    );
    assert.equal(shardCounter(broker, 0, Counter.deliveryDroppedTooLarge), dropped + 1);
  });
}

for (const [what, alias] of [
  ['0', 0],
  ['Topic Alias Maximum + 1', ALIAS2['mqtt.max_topic_alias'] + 1],
] as const) {
  test(`v5: Topic Alias ${what} gets DISCONNECT 0x94 and the connection closed at once [MQTT-3.3.2-8], [MQTT-3.3.2-9]`, async (t) => {
    const broker = await shared(ALIAS2);
    const { raw, connack } = await rawConnect5(t, broker, { clientId: `alias-${alias}` });
    assert.equal(connack.properties?.topicAliasMaximum, 2);
    raw.send(publishFrame5({ topic: 'alias/x', payload: 'x', props: [[0x23, alias]] }));
    const f = await readFrame(raw, 5_000);
    assert.deepEqual([f.type, f.body[0]], [14, 0x94]);
    // Closed by the broker, not only half-closed after a grace period.
    await raw.waitClosed(1_500);
  });
}

test('v5: the inbound topic alias table holds at most mqtt.max_topic_alias entries [MQTT-3.3.2-9]', async (t) => {
  const broker = await shared(ALIAS2);
  const id = idOnShard(broker, 0, 'alias-bound');
  const { pc: sub } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'alias-bound-sub'));
  await sub.subscribe('bound/#', 0);
  const { raw } = await rawConnect5(t, broker, { clientId: id });
  // Aliases 1 and 2 set, then re-set to another topic (replaced, not added), then used.
  raw.send(publishFrame5({ topic: 'bound/a', payload: '1', props: [[0x23, 1]] }));
  raw.send(publishFrame5({ topic: 'bound/b', payload: '2', props: [[0x23, 2]] }));
  raw.send(publishFrame5({ topic: 'bound/c', payload: '3', props: [[0x23, 1]] }));
  raw.send(publishFrame5({ topic: '', payload: '4', props: [[0x23, 1]] }));
  raw.send(publishFrame5({ topic: '', payload: '5', props: [[0x23, 2]] }));
  const got: string[] = [];
  for (let i = 0; i < 5; i++) {
    const p = await sub.expect('publish');
    got.push(`${p.topic}=${p.payload}`);
  }
  assert.deepEqual(got, ['bound/a=1', 'bound/b=2', 'bound/c=3', 'bound/c=4', 'bound/b=5']);
  // A third alias would grow the table past the maximum: refused.
  raw.send(publishFrame5({ topic: 'bound/d', payload: '6', props: [[0x23, 3]] }));
  const f = await readFrame(raw);
  assert.deepEqual([f.type, f.body[0]], [14, 0x94]);
});

test('MQTT 3.1.1: PUBREC or PUBCOMP for a QoS 1 delivery is ignored; it completes on PUBACK or is resent on reconnect [MQTT-4.3.2-1], [MQTT-4.4.0-1]', async (t) => {
  const broker = await shared();
  const { id, topic, sub, pub } = await persistentPair(t, broker, 'ack1', 4);
  pub.send({
    cmd: 'publish',
    topic,
    payload: Buffer.from('m1'),
    qos: 1,
    messageId: 1,
    dup: false,
    retain: false,
  });
  const m1 = await sub.expect('publish');
  sub.send({ cmd: 'pubrec', messageId: m1.messageId });
  sub.send({ cmd: 'pubcomp', messageId: m1.messageId });
  // No PUBREL for a QoS 1 id: nothing comes before the PINGRESP.
  assert.deepEqual(
    (await sub.ping()).map((p) => p.cmd),
    [],
    'no answer to the wrong acks',
  );
  // Still inflight: resent with DUP on reconnect.
  await sub.destroy();
  const { pc } = await PacketClient.connect(t, broker, id, { clean: false });
  const resent = await pc.expect('publish');
  assert.deepEqual([resent.messageId, resent.dup, resent.payload.toString()], [m1.messageId, true, 'm1']);
  pc.send({ cmd: 'pubcomp', messageId: resent.messageId });
  pc.send({ cmd: 'puback', messageId: resent.messageId });
  // Completed: the next message is new, and nothing is resent after another reconnect.
  pub.send({
    cmd: 'publish',
    topic,
    payload: Buffer.from('m2'),
    qos: 1,
    messageId: 2,
    dup: false,
    retain: false,
  });
  const m2 = await pc.expect('publish');
  assert.deepEqual([m2.payload.toString(), m2.dup], ['m2', false]);
  pc.send({ cmd: 'puback', messageId: m2.messageId });
  assert.deepEqual(await pc.ping(), []);
  await pc.destroy();
  const { pc: last } = await PacketClient.connect(t, broker, id, { clean: false });
  assert.deepEqual(await last.ping(), [], 'nothing left inflight');
});

test('MQTT 3.1.1: PUBACK or PUBCOMP in place of PUBREC for a QoS 2 delivery is ignored; PUBREC then PUBCOMP completes it [MQTT-4.3.3-1]', async (t) => {
  const broker = await shared();
  const { id, topic, sub, pub } = await persistentPair(t, broker, 'ack2', 4);
  assert.deepEqual((await sub.subscribe(topic, 2, 2)).granted, [2]);
  pub.send({
    cmd: 'publish',
    topic,
    payload: Buffer.from('m1'),
    qos: 2,
    messageId: 1,
    dup: false,
    retain: false,
  });
  await pub.expect('pubrec');
  const m1 = await sub.expect('publish');
  assert.equal(m1.qos, 2);
  sub.send({ cmd: 'puback', messageId: m1.messageId });
  sub.send({ cmd: 'pubcomp', messageId: m1.messageId });
  assert.deepEqual(
    (await sub.ping()).map((p) => p.cmd),
    [],
    'no answer to the wrong acks',
  );
  // Still waiting for PUBREC: resent as PUBLISH with DUP on reconnect.
  await sub.destroy();
  const again = await PacketClient.connect(t, broker, id, { clean: false });
  const resent = await again.pc.expect('publish');
  assert.deepEqual([resent.messageId, resent.dup, resent.qos], [m1.messageId, true, 2]);
  again.pc.send({ cmd: 'pubrec', messageId: resent.messageId });
  const rel = await again.pc.expect('pubrel');
  assert.equal(rel.messageId, resent.messageId);
  // A stray PUBACK while waiting for PUBCOMP changes nothing either.
  again.pc.send({ cmd: 'puback', messageId: resent.messageId });
  again.pc.send({ cmd: 'pubcomp', messageId: resent.messageId });
  assert.deepEqual(await again.pc.ping(), []);
  await again.pc.destroy();
  const { pc: last } = await PacketClient.connect(t, broker, id, { clean: false });
  assert.deepEqual(await last.ping(), [], 'nothing left inflight');
});

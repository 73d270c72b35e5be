/**
 * QoS 1 and 2 flows on the wire (MQTT 3.1.1 §4.3, §4.4, §4.6): resend on reconnect, the QoS 2
 * handshakes in both directions, acknowledgement order, the inflight window, packet ids and
 * the awaiting-PUBREL limit. Raw clients (PacketClient) give exact control over what is acked.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqttPacket from 'mqtt-packet';
import { brokerPool, client, idOnShard, PacketClient, publish } from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

test('QoS 1: unacknowledged messages are resent with DUP 1 on reconnect, in order [MQTT-4.4.0-1]', async (t) => {
  const broker = await shared();
  for (const pubShard of [0, 1]) {
    const id = idOnShard(broker, 0, `resend1-${pubShard}`);
    const pub = await client(t, broker, { clientId: idOnShard(broker, pubShard, `resend1-pub-${pubShard}`) });
    const first = await PacketClient.connect(t, broker, id, { clean: false });
    await first.pc.subscribe('resend1/t', 1);
    for (let i = 0; i < 3; i++) await publish(pub, 'resend1/t', `m${i}`, { qos: 1 });
    const sent = [];
    for (let i = 0; i < 3; i++) {
      const p = await first.pc.expect('publish');
      assert.equal(p.dup, false, 'first delivery has DUP 0 [MQTT-3.3.1-3]');
      assert.equal(p.qos, 1);
      sent.push(p);
    }
    assert.deepEqual(
      sent.map((p) => p.payload.toString()),
      ['m0', 'm1', 'm2'],
    );
    // Acknowledge only the middle one; the ping makes sure the broker has handled the PUBACK.
    first.pc.send({ cmd: 'puback', messageId: sent[1].messageId });
    await first.pc.ping();
    await first.pc.destroy();

    const again = await PacketClient.connect(t, broker, id, { clean: false });
    assert.equal(again.connack.sessionPresent, true);
    const resent = [await again.pc.expect('publish'), await again.pc.expect('publish')];
    assert.deepEqual(
      resent.map((p) => [p.payload.toString(), p.messageId, p.dup, p.qos]),
      [
        ['m0', sent[0].messageId, true, 1],
        ['m2', sent[2].messageId, true, 1],
      ],
      'the unacknowledged ones, same packet ids, DUP 1, original order [MQTT-4.6.0-1]',
    );
    for (const p of resent) again.pc.send({ cmd: 'puback', messageId: p.messageId });
    // Acknowledged now: the next message is a fresh send, and nothing is resent again.
    await publish(pub, 'resend1/t', 'm3', { qos: 1 });
    const next = await again.pc.expect('publish');
    assert.deepEqual([next.payload.toString(), next.dup], ['m3', false]);
    again.pc.send({ cmd: 'puback', messageId: next.messageId });
    assert.deepEqual(await again.pc.ping(), []);
    again.pc.send({ cmd: 'disconnect' });
    await again.pc.waitClosed();
  }
});

test('QoS 2 outbound: PUBLISH → PUBREC → PUBREL → PUBCOMP [MQTT-4.3.3-1]; the slot is freed only by PUBCOMP', async (t) => {
  const broker = await shared({ 'mqtt.max_inflight': 1 });
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'out2'));
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'out2-pub') });
  await pc.subscribe('out2/t', 2);
  await publish(pub, 'out2/t', 'a', { qos: 2 });
  await publish(pub, 'out2/t', 'b', { qos: 2 });
  const a = await pc.expect('publish');
  assert.deepEqual([a.payload.toString(), a.qos, a.dup], ['a', 2, false]);
  pc.send({ cmd: 'pubrec', messageId: a.messageId });
  // With a window of 1, 'b' may not be sent before 'a' is complete: the next packet is PUBREL.
  const rel = await pc.expect('pubrel');
  assert.equal(rel.messageId, a.messageId, 'PUBREL carries the PUBLISH packet id [MQTT-4.3.3-1]');
  pc.send({ cmd: 'pubcomp', messageId: a.messageId });
  const b = await pc.expect('publish');
  assert.deepEqual([b.payload.toString(), b.qos], ['b', 2]);
  assert.notEqual(b.messageId, 0);
});

test('QoS 2 outbound: a reconnect after PUBREC gets PUBREL resent, not the PUBLISH [MQTT-4.4.0-1]', async (t) => {
  const broker = await shared();
  const id = idOnShard(broker, 1, 'rel-resend');
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'rel-resend-pub') });
  const first = await PacketClient.connect(t, broker, id, { clean: false });
  await first.pc.subscribe('relr/t', 2);
  await publish(pub, 'relr/t', 'received', { qos: 2 });
  await publish(pub, 'relr/t', 'unacked', { qos: 2 });
  const p1 = await first.pc.expect('publish');
  const p2 = await first.pc.expect('publish');
  first.pc.send({ cmd: 'pubrec', messageId: p1.messageId });
  assert.equal((await first.pc.expect('pubrel')).messageId, p1.messageId);
  // Gone before PUBCOMP.
  await first.pc.destroy();

  const again = await PacketClient.connect(t, broker, id, { clean: false });
  assert.equal(again.connack.sessionPresent, true);
  const r1 = await again.pc.next();
  const r2 = await again.pc.next();
  assert.deepEqual(
    [r1.cmd, r1.messageId],
    ['pubrel', p1.messageId],
    'the acknowledged-by-PUBREC message is not sent again, its PUBREL is',
  );
  assert.equal(r2.cmd, 'publish');
  assert.deepEqual(
    [r2.messageId, r2.cmd === 'publish' && r2.dup, r2.cmd === 'publish' && r2.payload.toString()],
    [p2.messageId, true, 'unacked'],
  );
  again.pc.send({ cmd: 'pubcomp', messageId: p1.messageId });
  again.pc.send({ cmd: 'pubrec', messageId: p2.messageId });
  assert.equal((await again.pc.expect('pubrel')).messageId, p2.messageId);
  again.pc.send({ cmd: 'pubcomp', messageId: p2.messageId });
  assert.deepEqual(await again.pc.ping(), [], 'nothing more to resend');
});

test('QoS 2 inbound: exactly once across a reconnect between PUBREC and PUBREL [MQTT-4.3.3-2]', async (t) => {
  const broker = await shared();
  for (const subShard of [0, 1]) {
    const id = idOnShard(broker, 1, `in2-${subShard}`);
    const topic = `in2/${subShard}`;
    const sub = await PacketClient.connect(t, broker, idOnShard(broker, subShard, `in2-sub-${subShard}`));
    await sub.pc.subscribe(topic, 2);

    const first = await PacketClient.connect(t, broker, id, { clean: false });
    first.pc.send({
      cmd: 'publish',
      topic,
      payload: 'once',
      qos: 2,
      messageId: 7,
      dup: false,
      retain: false,
    });
    assert.equal((await first.pc.expect('pubrec')).messageId, 7);
    await first.pc.destroy();

    const again = await PacketClient.connect(t, broker, id, { clean: false });
    assert.equal(again.connack.sessionPresent, true);
    again.pc.send({ cmd: 'publish', topic, payload: 'once', qos: 2, messageId: 7, dup: true, retain: false });
    assert.equal((await again.pc.expect('pubrec')).messageId, 7, 'the resent PUBLISH is acknowledged again');
    again.pc.send({ cmd: 'pubrel', messageId: 7 });
    assert.equal((await again.pc.expect('pubcomp')).messageId, 7);
    // The id is free again after PUBCOMP: a new message with id 7 is a new message.
    again.pc.send({
      cmd: 'publish',
      topic,
      payload: 'next',
      qos: 2,
      messageId: 7,
      dup: false,
      retain: false,
    });
    assert.equal((await again.pc.expect('pubrec')).messageId, 7);
    again.pc.send({ cmd: 'pubrel', messageId: 7 });
    assert.equal((await again.pc.expect('pubcomp')).messageId, 7);

    // The subscriber sees 'once' exactly once, then 'next' (per-publisher order: a second
    // 'once' would have to come before 'next').
    const got = [await sub.pc.expect('publish'), await sub.pc.expect('publish')];
    assert.deepEqual(
      got.map((p) => [p.payload.toString(), p.qos]),
      [
        ['once', 2],
        ['next', 2],
      ],
    );
    assert.deepEqual(await sub.pc.ping(), []);
  }
});

test('acks are sent in PUBLISH order: PUBACK/PUBREC [MQTT-4.6.0-2], [MQTT-4.6.0-3], PUBCOMP in PUBREL order', async (t) => {
  const broker = await shared();
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'order'));
  // Retained messages hold their ack until the store has them; later acks must queue behind.
  const plan: { qos: 1 | 2; retain: boolean }[] = [
    { qos: 1, retain: false },
    { qos: 2, retain: true },
    { qos: 1, retain: false },
    { qos: 1, retain: true },
    { qos: 2, retain: false },
    { qos: 2, retain: true },
    { qos: 1, retain: false },
  ];
  const frames = plan.map((m, i) =>
    mqttPacket.generate({
      cmd: 'publish',
      topic: `order/${i}`,
      payload: `p${i}`,
      qos: m.qos,
      retain: m.retain,
      messageId: i + 1,
      dup: false,
    }),
  );
  pc.send(Buffer.concat(frames)); // one write: the broker handles them in one go
  const acks = [];
  for (let i = 0; i < plan.length; i++) {
    const p = await pc.next();
    acks.push([p.cmd, p.messageId]);
  }
  assert.deepEqual(
    acks,
    plan.map((m, i) => [m.qos === 1 ? 'puback' : 'pubrec', i + 1]),
  );
  const rels = plan
    .map((m, i) => (m.qos === 2 ? i + 1 : 0))
    .filter((id) => id > 0)
    .reverse();
  for (const id of rels) pc.send({ cmd: 'pubrel', messageId: id });
  const comps = [];
  for (let i = 0; i < rels.length; i++) comps.push((await pc.expect('pubcomp')).messageId);
  assert.deepEqual(comps, rels);
});

test('inflight window: max_inflight 2 sends 2, then one more per ack; ids non-zero and unique among inflight [MQTT-2.3.1-1], [MQTT-2.3.1-2]', async (t) => {
  const broker = await shared({ 'mqtt.max_inflight': 2, 'mqtt.max_awaiting_rel': 2 });
  for (const pubShard of [0, 1]) {
    const topic = `window/${pubShard}`;
    const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, `window-${pubShard}`));
    const pub = await client(t, broker, { clientId: idOnShard(broker, pubShard, `window-pub-${pubShard}`) });
    await pc.subscribe(topic, 1);
    for (let i = 0; i < 6; i++) await publish(pub, topic, `m${i}`, { qos: 1 });
    // A QoS 0 marker (delivered at QoS 0, not queued) from the same publisher: whatever the
    // window let through was sent before it.
    await publish(pub, topic, 'marker', { qos: 0 });
    const before = [];
    for (;;) {
      const p = await pc.expect('publish');
      if (p.payload.toString() === 'marker') break;
      before.push(p);
    }
    assert.deepEqual(
      before.map((p) => p.payload.toString()),
      ['m0', 'm1'],
      'only max_inflight unacknowledged messages',
    );
    const inflight = new Map(before.map((p) => [p.messageId!, p.payload.toString()]));
    const received = before.map((p) => p.payload.toString());
    while (inflight.size > 0) {
      // Ack the oldest: exactly one more comes (the next in order), while any is left.
      const [oldest] = inflight.keys();
      pc.send({ cmd: 'puback', messageId: oldest });
      inflight.delete(oldest);
      const more = await pc.ping();
      for (const p of more) {
        assert.equal(p.cmd, 'publish');
        if (p.cmd !== 'publish') continue;
        assert.ok(p.messageId! > 0, 'packet id non-zero [MQTT-2.3.1-1]');
        assert.ok(
          !inflight.has(p.messageId!),
          `packet id ${p.messageId} unique among inflight [MQTT-2.3.1-2]`,
        );
        inflight.set(p.messageId!, p.payload.toString());
        received.push(p.payload.toString());
      }
      assert.ok(inflight.size <= 2, `window exceeded: ${[...inflight.values()]}`);
    }
    assert.deepEqual(received, ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
  }
});

test('max_awaiting_rel exceeded closes the publisher (EMQX policy; a resent id is not new [MQTT-4.3.3-2])', async (t) => {
  const broker = await shared({ 'mqtt.max_inflight': 2, 'mqtt.max_awaiting_rel': 2 });
  const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'awaiting'));
  for (let id = 1; id <= 2; id++) {
    pc.send({
      cmd: 'publish',
      topic: 'await/t',
      payload: `p${id}`,
      qos: 2,
      messageId: id,
      dup: false,
      retain: false,
    });
    assert.equal((await pc.expect('pubrec')).messageId, id);
  }
  // A resend of an id already awaiting PUBREL does not count as a new one.
  pc.send({
    cmd: 'publish',
    topic: 'await/t',
    payload: 'p2',
    qos: 2,
    messageId: 2,
    dup: true,
    retain: false,
  });
  assert.equal((await pc.expect('pubrec')).messageId, 2);
  pc.send({
    cmd: 'publish',
    topic: 'await/t',
    payload: 'p3',
    qos: 2,
    messageId: 3,
    dup: false,
    retain: false,
  });
  await pc.waitClosed();
  assert.deepEqual(
    pc.pending.filter((p) => p.cmd === 'pubrec'),
    [],
    'no PUBREC for the message over the limit',
  );
});

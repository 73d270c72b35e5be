/**
 * MQTT 5.0 sessions, DISCONNECT and wills (OASIS MQTT 5.0 §3.1.2.11.2, §3.1.3.2, §3.14, §4.13):
 * Session Expiry Interval (at CONNECT and changed at DISCONNECT), the reason codes of
 * broker-initiated DISCONNECTs, DISCONNECT with Will Message, Will Delay Interval and will
 * properties. Clients sit on both shards and MQTT 3.1.1 and 5.0 are mixed unless a test says otherwise.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import type { IConnectPacket, IPublishPacket } from 'mqtt-packet';
import type { Broker } from '../src/broker/broker.js';
import { PACKETS_SENT_BY_TYPE } from '../src/metrics/counters.js';
import {
  brokerPool,
  client,
  client5,
  clientWithInbox,
  Inbox,
  idOnShard,
  mqttString,
  PacketClient,
  type Prop5,
  parsePublish5,
  props5,
  publish,
  type RawClient,
  rawConnect5,
  rawConnected,
  rawFrame,
  readFrame,
  startBroker,
  subscribe,
  subscribeFrame5,
  untilPast,
  waitFor,
} from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

type Opts = Omit<IConnectPacket, 'cmd' | 'clientId'>;

/** A raw MQTT 5 client (parsed packets); `expiry` is its Session Expiry Interval (absent when undefined). */
async function v5(t: TestContext, broker: Broker, clientId: string, expiry?: number, opts: Opts = {}) {
  return PacketClient.connect(t, broker, clientId, {
    protocolVersion: 5,
    ...opts,
    properties: { ...(expiry === undefined ? {} : { sessionExpiryInterval: expiry }), ...opts.properties },
  });
}

/** PUBLISH QoS 1 from a raw v5 client; resolves with the PUBACK reason code (0x10: nobody subscribed). */
async function probe(pc: PacketClient, topic: string, messageId: number): Promise<number> {
  pc.send({ cmd: 'publish', topic, payload: 'probe', qos: 1, retain: false, dup: false, messageId });
  const ack = await pc.expect('puback');
  return ack.reasonCode ?? 0;
}

test('Session Expiry Interval absent (0): the session ends when the connection closes, with or without DISCONNECT [MQTT-3.1.2-23], §3.1.2.11.2', async (t) => {
  const broker = await shared();
  const { pc: pub } = await v5(t, broker, idOnShard(broker, 0, 'se0-pub'));
  for (const [shard, graceful] of [
    [1, true],
    [0, false],
  ] as const) {
    const id = idOnShard(broker, shard, `se0-${graceful}`);
    const topic = `se0/${shard}`;
    const { pc } = await v5(t, broker, id, undefined, { clean: false });
    await pc.subscribe(topic, 1);
    assert.equal(await probe(pub, topic, 1), 0);
    if (graceful) pc.send({ cmd: 'disconnect' });
    else pc.socket.destroy();
    await pc.waitClosed();
    // The subscription goes with the session: soon nobody matches any more (the broker notices a
    // destroyed socket a little later; a DISCONNECT is handled before the broker closes).
    const deadline = Date.now() + 10_000;
    let messageId = 2;
    while ((await probe(pub, topic, messageId++)) !== 0x10) {
      assert.ok(!graceful, 'after DISCONNECT the session is gone at once');
      assert.ok(Date.now() < deadline, 'the session was not discarded');
      await new Promise((r) => setTimeout(r, 5));
    }
    const { pc: again, connack } = await v5(t, broker, id, undefined, { clean: false });
    assert.equal(connack.sessionPresent, false);
    assert.deepEqual(await again.ping(), []);
    again.send({ cmd: 'disconnect' });
    await again.waitClosed();
  }
});

test('Session Expiry Interval > 0 keeps the session: Session Present 1 and the queued messages from a 3.1.1 publisher [MQTT-3.1.2-23], [MQTT-3.2.2-3]', async (t) => {
  const broker = await shared();
  const id = idOnShard(broker, 0, 'se60');
  const { pc } = await v5(t, broker, id, 60);
  await pc.subscribe('se60/#', 1);
  pc.send({ cmd: 'disconnect' });
  await pc.waitClosed();
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'se60-pub') });
  await publish(pub, 'se60/a', 'one', { qos: 1 });
  await publish(pub, 'se60/b', 'two', { qos: 1 });
  await publish(pub, 'se60/c', 'three', { qos: 0 });
  const { pc: back, connack } = await v5(t, broker, id, 60, { clean: false });
  assert.equal(connack.sessionPresent, true);
  const got: IPublishPacket[] = [];
  for (let i = 0; i < 3; i++) got.push(await back.expect('publish'));
  assert.deepEqual(
    got.map((p) => [p.topic, p.payload.toString(), p.qos]),
    [
      ['se60/a', 'one', 1],
      ['se60/b', 'two', 1],
      ['se60/c', 'three', 0],
    ],
  );
  // The subscription is still there for new messages.
  await publish(pub, 'se60/d', 'four', { qos: 1 });
  const live = await back.expect('publish');
  assert.deepEqual([live.topic, live.payload.toString()], ['se60/d', 'four']);
});

test('0xFFFFFFFF never expires; DISCONNECT changes the interval (longer kept, 0 ends now); non-zero after 0 → DISCONNECT 0x82 and the will [MQTT-3.1.2-23], §3.1.2.11.2, §3.14.2.2.2', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const willSub = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 0, 'sx-willsub') });
  await subscribe(willSub.c, 'sx/will', 1);
  const ids = {
    never: idOnShard(broker, 0, 'sx-never'),
    longer: idOnShard(broker, 1, 'sx-longer'),
    companion: idOnShard(broker, 1, 'sx-companion'),
    ended: idOnShard(broker, 0, 'sx-ended'),
    invalid: idOnShard(broker, 1, 'sx-invalid'),
  };
  const leave = async (id: string, connectExpiry: number | undefined, disconnectExpiry?: number) => {
    const { pc } = await v5(t, broker, id, connectExpiry, {
      will: { topic: 'sx/will', payload: Buffer.from(id), qos: 1, retain: false },
    });
    await pc.subscribe(`sx/${id}`, 1);
    pc.send({
      cmd: 'disconnect',
      reasonCode: 0,
      ...(disconnectExpiry === undefined ? {} : { properties: { sessionExpiryInterval: disconnectExpiry } }),
    });
    return pc;
  };
  await (await leave(ids.never, 0xffffffff)).waitClosed();
  await (await leave(ids.longer, 1, 300)).waitClosed();
  await (await leave(ids.companion, 1)).waitClosed();
  const disconnectedAt = Date.now();
  await (await leave(ids.ended, 60, 0)).waitClosed();

  // CONNECT said 0: a non-zero interval at DISCONNECT is a protocol error, not a valid DISCONNECT,
  // so the will is published and the session still ends.
  const invalid = await leave(ids.invalid, undefined, 30);
  const d = await invalid.expect('disconnect');
  assert.equal(d.reasonCode, 0x82);
  await invalid.waitClosed();
  const [w] = await willSub.inbox.wait(1);
  assert.deepEqual([w.topic, w.payload], ['sx/will', ids.invalid]);

  // The companion (1 s, unchanged) expires; 'longer' had the same 1 s at CONNECT.
  await untilPast(disconnectedAt + 1000, 'the 1 s session expiry');
  await waitFor(
    () => broker.counters.snapshot().sessionExpired - base.sessionExpired >= 1,
    'the 1 s session to expire',
  );
  const present: Record<string, boolean> = {};
  for (const [name, id] of Object.entries(ids)) {
    const { pc, connack } = await v5(t, broker, id, 60, { clean: false });
    present[name] = connack.sessionPresent;
    pc.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 0 } });
    await pc.waitClosed();
  }
  assert.deepEqual(present, { never: true, longer: true, companion: false, ended: false, invalid: false });
  assert.equal(broker.counters.snapshot().sessionExpired - base.sessionExpired, 1);
  // Only the invalid DISCONNECT's will was published.
  assert.equal(willSub.inbox.messages.length, 1);
});

test('takeover: the old MQTT 5 connection gets DISCONNECT 0x8E, a 3.1.1 one is just closed; its will follows the Will Delay Interval [MQTT-3.1.4-3], [MQTT-3.1.3-9]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await client(t, broker, { clientId: idOnShard(broker, 0, 'to-willsub') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'to/will/#', 1);
  // [shard, old is v5, new is v5, will delay of the old connection]
  for (const [shard, oldV5, newV5, delay] of [
    [0, true, true, 0], // will published: no delay
    [1, true, false, 30], // not published: the session is resumed within the delay
    [1, false, true, 0], // 3.1.1: published
  ] as const) {
    const id = idOnShard(broker, shard, `to-${oldV5}-${newV5}`);
    const will = { topic: `to/will/${id}`, payload: Buffer.from(id), qos: 1 as const, retain: false };
    const { pc: old } = await PacketClient.connect(t, broker, id, {
      protocolVersion: oldV5 ? 5 : 4,
      clean: false,
      ...(oldV5
        ? {
            properties: { sessionExpiryInterval: 60 },
            will: { ...will, properties: { willDelayInterval: delay } },
          }
        : { will }),
    });
    await old.subscribe(`to/${id}`, 1);
    const { pc: next, connack } = await PacketClient.connect(t, broker, id, {
      protocolVersion: newV5 ? 5 : 4,
      clean: false,
      ...(newV5 ? { properties: { sessionExpiryInterval: 60 } } : {}),
    });
    assert.equal(connack.sessionPresent, true);
    if (oldV5) {
      const d = await old.expect('disconnect');
      assert.equal(d.reasonCode, 0x8e);
    }
    await old.waitClosed();
    assert.deepEqual([...old.pending], []);
    await next.ping();
    next.send({ cmd: 'disconnect' });
    await next.waitClosed();
  }
  const s = broker.counters.snapshot();
  assert.equal(s.sessionTakenover - base.sessionTakenover, 3);
  // Wills are published while the new connection is adopted, before its CONNACK.
  assert.equal(s.willsPublished - base.willsPublished, 2);
  assert.deepEqual(
    (await inbox.wait(2)).map((m) => m.payload).sort(),
    [idOnShard(broker, 0, 'to-true-true'), idOnShard(broker, 1, 'to-false-true')].sort(),
  );
});

test('keep-alive timeout: MQTT 5 gets DISCONNECT 0x8D, MQTT 3.1.1 is closed [MQTT-3.1.2-22], [MQTT-3.2.2-22]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const started = Date.now();
  await Promise.all([
    (async () => {
      const { pc } = await v5(t, broker, idOnShard(broker, 1, 'ka5'), undefined, { keepalive: 1 });
      const d = await pc.expect('disconnect');
      assert.equal(d.reasonCode, 0x8d);
      await pc.waitClosed();
    })(),
    (async () => {
      const { pc } = await PacketClient.connect(t, broker, idOnShard(broker, 0, 'ka3'), { keepalive: 1 });
      await pc.waitClosed();
      assert.deepEqual([...pc.pending], []);
    })(),
  ]);
  assert.ok(Date.now() - started >= 1450, `closed after ${Date.now() - started} ms`);
  assert.equal(broker.counters.snapshot().keepaliveTimeouts - base.keepaliveTimeouts, 2);
});

test('protocol error → DISCONNECT 0x82, malformed packet → 0x81, packet too large → 0x95, then close [MQTT-4.13.1-1], [MQTT-3.1.0-2], [MQTT-2.1.3-1], [MQTT-3.2.2-15]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const disconnectsSent = () => broker.counters.total(PACKETS_SENT_BY_TYPE + 14);
  const sentBefore = disconnectsSent();
  const cases: [string, Buffer, number][] = [
    ['second CONNECT', rawFrame(0x10, mqttString('MQTT'), [5, 2, 0, 60, 0], mqttString('x')), 0x82],
    ['Subscription Identifier in PUBLISH [MQTT-3.3.4-6]', pub5([[0x0b, 1]]), 0x82],
    ['PUBACK with reserved flags set', Buffer.from([0x41, 2, 0, 1]), 0x81],
    ['PUBLISH properties overrunning the packet', rawFrame(0x30, mqttString('m/t'), [9, 0x01]), 0x81],
    ['property not valid for PUBLISH (Session Expiry Interval)', pub5([[0x11, 1]]), 0x81],
    [
      'property not valid for DISCONNECT (Will Delay Interval)',
      rawFrame(0xe0, [0], props5([[0x18, 1]])),
      0x81,
    ],
    // A remaining length of 2 097 152 is refused as soon as the header is in.
    ['PUBLISH over the maximum packet size', Buffer.from([0x30, 0x80, 0x80, 0x80, 0x01]), 0x95],
  ];
  for (const [i, [what, frame, code]] of cases.entries()) {
    const { pc } = await v5(t, broker, idOnShard(broker, i % 2, `pe-${i}`));
    pc.send(frame);
    const d = await pc.expect('disconnect');
    assert.equal(d.reasonCode, code, what);
    // A Reason String, and never a Session Expiry Interval from the server [MQTT-3.14.2-2].
    assert.deepEqual(Object.keys(d.properties ?? {}), ['reasonString'], what);
    await pc.waitClosed();
  }
  const s = broker.counters.snapshot();
  // Counted as sent packets (EMQX packets.disconnect.sent) like any other.
  assert.equal(disconnectsSent() - sentBefore, cases.length);
  assert.equal(s.protocolErrors - base.protocolErrors, 2);
  assert.equal(s.malformedPackets - base.malformedPackets, 4);
  assert.equal(s.oversizedPackets - base.oversizedPackets, 1);
});

function pub5(props: Prop5[]): Buffer {
  return rawFrame(0x30, mqttString('m/t'), props5(props), 'x');
}

test('broker stop: MQTT 5 clients get DISCONNECT 0x8B Server shutting down, 3.1.1 clients are closed; no wills [MQTT-3.14.2-1]', async (t) => {
  const broker = await startBroker(t);
  const clients = [];
  for (const shard of [0, 1]) {
    clients.push(
      (
        await v5(t, broker, idOnShard(broker, shard, 'stop-v5'), 60, {
          will: { topic: 'stop/will', payload: Buffer.from('w'), qos: 1, retain: false },
        })
      ).pc,
    );
  }
  const v3 = (await PacketClient.connect(t, broker, idOnShard(broker, 1, 'stop-v3'), {})).pc;
  const stopping = broker.stop();
  for (const pc of clients) {
    const d = await pc.expect('disconnect');
    assert.equal(d.reasonCode, 0x8b);
    await pc.waitClosed();
  }
  await v3.waitClosed();
  assert.deepEqual([...v3.pending], []);
  await stopping;
  assert.equal(broker.counters.snapshot().willsPublished, 0);
});

test('DISCONNECT 0x04 publishes the will, DISCONNECT 0x00 discards it [MQTT-3.14.4-3], [MQTT-3.1.2-8], [MQTT-3.1.2-10]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const sub = await client(t, broker, { clientId: idOnShard(broker, 1, 'dw-sub') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'dw/#', 2);
  const will = (payload: string) => ({
    topic: 'dw/will',
    payload: Buffer.from(payload),
    qos: 1 as const,
    retain: false,
  });
  const { pc: normal } = await v5(t, broker, idOnShard(broker, 0, 'dw-normal'), undefined, {
    will: will('normal'),
  });
  normal.send({ cmd: 'disconnect', reasonCode: 0 });
  await normal.waitClosed();
  const { pc: withWill } = await v5(t, broker, idOnShard(broker, 0, 'dw-with'), undefined, {
    will: will('with'),
  });
  withWill.send({ cmd: 'disconnect', reasonCode: 0x04 });
  await withWill.waitClosed();
  const [m] = await inbox.wait(1);
  assert.deepEqual([m.topic, m.payload, m.qos], ['dw/will', 'with', 1]);
  // Both were handled in order on shard 0: a marker from there, published afterwards, comes next.
  const marker = await client(t, broker, { clientId: idOnShard(broker, 0, 'dw-marker') });
  await publish(marker, 'dw/marker', 'm', { qos: 1 });
  const all = await inbox.wait(2);
  assert.deepEqual(
    all.map((x) => x.payload),
    ['with', 'm'],
  );
  assert.equal(broker.counters.snapshot().willsPublished - base.willsPublished, 1);
});

test('Will Delay Interval [MQTT-3.1.3-9], [MQTT-3.1.2-8]', { concurrency: true }, async (t) => {
  const broker = await shared();
  const sub = await client5(t, broker, { clientId: idOnShard(broker, 0, 'wd-sub') });
  await new Promise<void>((resolve, reject) =>
    sub.c.subscribe('wd/#', { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
  const arrived = new Map<string, number>();
  sub.c.on('message', (topic) => arrived.set(topic, Date.now()));
  const willClient = (tc: TestContext, name: string, shard: number, delay: number, expiry: number) =>
    v5(tc, broker, idOnShard(broker, shard, `wd-${name}`), expiry, {
      clean: false,
      will: {
        topic: `wd/${name}`,
        payload: Buffer.from(name),
        qos: 1,
        retain: false,
        properties: { willDelayInterval: delay },
      },
    });

  await Promise.all([
    t.test('published after the delay when the client does not come back', async (tc) => {
      const { pc } = await willClient(tc, 'late', 1, 1, 60);
      const closedAt = Date.now();
      pc.socket.destroy();
      await waitFor(() => arrived.has('wd/late'), 'the delayed will');
      assert.ok(arrived.get('wd/late')! - closedAt >= 1000, `after ${arrived.get('wd/late')! - closedAt} ms`);
    }),
    t.test('not published when the session is resumed within the delay, nor later', async (tc) => {
      // A 5 s delay: the reconnect (a new TCP connection handed to the shard) must land within
      // it, which on a loaded CI machine can take well over a second.
      const { pc } = await willClient(tc, 'resumed', 0, 5, 60);
      const closedAt = Date.now();
      pc.socket.destroy();
      await pc.waitClosed();
      const { pc: back, connack } = await willClient(tc, 'resumed', 0, 5, 60);
      assert.equal(connack.sessionPresent, true);
      assert.ok(Date.now() - closedAt < 5000, 'reconnected within the will delay (test premise)');
      // Past the original will time and a sweep: still nothing.
      await untilPast(closedAt + 6100, 'the original will time and a sweep');
      assert.equal(arrived.has('wd/resumed'), false);
      back.send({ cmd: 'disconnect', reasonCode: 0 });
      await back.waitClosed();
    }),
    t.test('published when the session expires before the delay', async (tc) => {
      const { pc } = await willClient(tc, 'expired', 1, 60, 1);
      const closedAt = Date.now();
      pc.socket.destroy();
      await waitFor(() => arrived.has('wd/expired'), 'the will at session end');
      assert.ok(arrived.get('wd/expired')! - closedAt >= 1000);
    }),
    t.test('published at once when the session ends with the connection (expiry 0)', async (tc) => {
      const { pc } = await willClient(tc, 'noexpiry', 0, 60, 0);
      pc.socket.destroy();
      await waitFor(() => arrived.has('wd/noexpiry'), 'the will at session end');
    }),
    t.test('published when a Clean Start 1 connection ends the session within the delay', async (tc) => {
      const id = idOnShard(broker, 1, 'wd-cleaned');
      const { pc } = await willClient(tc, 'cleaned', 1, 60, 60);
      pc.socket.destroy();
      await pc.waitClosed();
      const { connack } = await v5(tc, broker, id, 0, { clean: true });
      assert.equal(connack.sessionPresent, false);
      await waitFor(() => arrived.has('wd/cleaned'), 'the will at session end');
    }),
  ]);
});

test('will properties reach subscribers: user properties in order, content type, response topic, correlation data, payload format, remaining expiry [MQTT-3.1.3-10], [MQTT-3.3.2-4], [MQTT-3.3.2-6]', async (t) => {
  const broker = await shared();
  const subs: RawClient[] = [];
  for (const shard of [0, 1]) {
    const { raw } = await rawConnect5(t, broker, { clientId: idOnShard(broker, shard, 'wp-sub') });
    raw.send(subscribeFrame5(1, 'wp/will', 1));
    assert.deepEqual([...(await readFrame(raw)).body], [0, 1, 0, 1]);
    subs.push(raw);
  }
  const v3 = await rawConnected(t, broker, { clientId: idOnShard(broker, 1, 'wp-v3') });
  v3.send(rawFrame(0x82, [0, 1], mqttString('wp/will'), [1]));
  assert.deepEqual([...(await readFrame(v3)).body], [0, 1, 1]);

  const forwarded: Prop5[] = [
    [0x26, ['k', 'first']],
    [0x03, 'application/json'],
    [0x26, ['other', 'x']],
    [0x08, 'wp/reply'],
    [0x09, Buffer.from('corr')],
    [0x26, ['k', 'second']],
  ];
  const { raw: owner } = await rawConnect5(t, broker, {
    clientId: idOnShard(broker, 0, 'wp-owner'),
    will: {
      topic: 'wp/will',
      payload: '{"gone":true}',
      qos: 1,
      props: [[0x01, 1], ...forwarded.slice(0, 3), [0x02, 300], ...forwarded.slice(3)],
    },
  });
  owner.socket.destroy();
  for (const raw of subs) {
    const p = parsePublish5(await readFrame(raw));
    assert.deepEqual([p.topic, p.qos, p.payload.toString()], ['wp/will', 1, '{"gone":true}']);
    const expiry = p.props.find(([id]) => id === 0x02);
    assert.ok(expiry && (expiry[1] as number) <= 300 && (expiry[1] as number) >= 290, `expiry ${expiry}`);
    // User properties keep their order [MQTT-3.1.3-10]; the others are there unaltered.
    assert.deepEqual(
      p.props.filter(([id]) => id === 0x26),
      forwarded.filter(([id]) => id === 0x26),
    );
    assert.deepEqual(
      p.props.filter(([id]) => id !== 0x26 && id !== 0x02).sort((a, b) => a[0] - b[0]),
      [[0x01, 1], ...forwarded.filter(([id]) => id !== 0x26)],
    );
  }
  const f = await readFrame(v3);
  assert.deepEqual(
    f.body,
    Buffer.concat([mqttString('wp/will'), Buffer.from([0, 1]), Buffer.from('{"gone":true}')]),
  );
});

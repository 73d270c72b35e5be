/**
 * MQTT 5.0 CONNECT / CONNACK (OASIS MQTT 5.0 §3.1, §3.2): the CONNACK properties that announce the
 * server's limits and capabilities, Assigned Client Identifier, Server Keep Alive, Response
 * Information, and refusals with v5 reason codes (authentication method, malformed CONNECT, will
 * beyond the server's capabilities). MQTT 3.1.1 and 5.0 clients share one broker. Clients sit on
 * both shards (idOnShard) unless a test says otherwise.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  brokerPool,
  type Connect5Spec,
  client,
  client5,
  connectFrame,
  connectFrame5,
  Inbox,
  idOnShard,
  PacketClient,
  publish,
  publishFrame5,
  RawClient,
  rawConnect5,
  readFrame,
  subscribe,
  subscribeFrame5,
  within,
} from './helpers/broker.js';

/** Brokers shared by this file's tests that need the same options (ids and topics are unique per test). */
const shared = brokerPool();

const LIMITED = {
  'mqtt.max_qos_allowed': 1,
  'mqtt.retain_available': false,
  'mqtt.wildcard_subscription': false,
  'mqtt.shared_subscription': false,
  'mqtt.max_topic_alias': 0,
  'mqtt.receive_maximum': 7,
  'mqtt.max_packet_size': 4096,
};
const KEEPALIVE = { 'mqtt.server_keepalive': 1, 'mqtt.response_information': 'reply/to/' };

test('CONNACK carries the server limits and capabilities; nothing else by default [MQTT-3.2.2-9], [MQTT-3.2.2-15], [MQTT-3.2.2-22], [MQTT-3.1.2-28]', async (t) => {
  const broker = await shared();
  for (const shard of [0, 1]) {
    const { pc, connack } = await PacketClient.connect(t, broker, idOnShard(broker, shard, 'ca-default'), {
      protocolVersion: 5,
      properties: { requestResponseInformation: true },
    });
    assert.equal(connack.reasonCode, 0);
    assert.equal(connack.sessionPresent, false);
    // Exactly these: no Maximum QoS (2 supported), no Retain Available (supported), no Assigned
    // Client Identifier, no Server Keep Alive (the client's is used), and no Response Information
    // (requested, but none configured).
    assert.deepEqual(connack.properties, {
      receiveMaximum: 32,
      maximumPacketSize: 1048576,
      topicAliasMaximum: 65535,
      wildcardSubscriptionAvailable: true,
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: true,
    });
    await pc.ping();
  }
});

test('CONNACK announces lower configured limits: Maximum QoS, Retain Available 0, no wildcards/shared, no Topic Alias Maximum [MQTT-3.2.2-9], [MQTT-3.2.2-18]', async (t) => {
  const broker = await shared(LIMITED);
  for (const shard of [0, 1]) {
    const { connack } = await PacketClient.connect(t, broker, idOnShard(broker, shard, 'ca-limited'), {
      protocolVersion: 5,
    });
    assert.equal(connack.reasonCode, 0);
    assert.deepEqual(connack.properties, {
      receiveMaximum: 7,
      maximumPacketSize: 4096,
      maximumQoS: 1,
      retainAvailable: false,
      wildcardSubscriptionAvailable: false,
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: false,
    });
  }
  // A 3.1.1 client on the same broker gets the plain 4-byte CONNACK.
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame({ clientId: idOnShard(broker, 1, 'ca-limited-v3') }));
  assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
});

test('the announced limits are the enforced ones: Maximum Packet Size to the byte, no Topic Alias, no wildcard or shared subscriptions [MQTT-3.2.2-15], [MQTT-3.2.2-18]', async (t) => {
  const broker = await shared(LIMITED);
  const sub = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'ca-enf-sub'), {
    protocolVersion: 5,
  });
  sub.pc.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [
      { topic: 'l/p', qos: 1 },
      { topic: 'l/#', qos: 0 },
      { topic: '$share/g/l/p', qos: 0 },
    ],
  });
  const suback = await sub.pc.expect('suback');
  // Granted QoS 1; 0xA2 Wildcard Subscriptions not supported; 0x9E Shared Subscriptions not supported.
  assert.deepEqual(suback.granted, [1, 0xa2, 0x9e]);

  const pubId = idOnShard(broker, 0, 'ca-enf-pub');
  // v5 QoS 0 PUBLISH to 'l/p' without properties: 9 bytes + payload.
  const { pc: pub } = await PacketClient.connect(t, broker, pubId, { protocolVersion: 5 });
  pub.send(publishFrame5({ topic: 'l/p', payload: Buffer.alloc(4087, 0x61) }));
  const m = await sub.pc.expect('publish');
  assert.equal(m.payload.length, 4087);
  pub.send(publishFrame5({ topic: 'l/p', payload: Buffer.alloc(4088, 0x61) }));
  assert.equal((await pub.expect('disconnect')).reasonCode, 0x95);
  await pub.waitClosed();
  // No Topic Alias Maximum announced: any alias is invalid.
  const { pc: aliasing } = await PacketClient.connect(t, broker, pubId, { protocolVersion: 5 });
  aliasing.send(publishFrame5({ topic: 'l/p', payload: 'x', props: [[0x23, 1]] }));
  assert.equal((await aliasing.expect('disconnect')).reasonCode, 0x94);
  await aliasing.waitClosed();
  assert.deepEqual(await sub.pc.ping(), []);
});

test('a will QoS above Maximum QoS is refused with CONNACK 0x9B, a will RETAIN without retain support with 0x9A [MQTT-3.2.2-12], [MQTT-3.2.2-13]', async (t) => {
  const broker = await shared(LIMITED);
  for (const [will, code] of [
    [{ topic: 'w/q2', payload: 'x', qos: 2 }, 0x9b],
    [{ topic: 'w/r', payload: 'x', qos: 0, retain: true }, 0x9a],
  ] as const) {
    const { raw, frame, connack } = await rawConnect5(t, broker, {
      clientId: idOnShard(broker, 1, `ca-will-${code}`),
      will,
    });
    assert.deepEqual([frame.type, [...frame.body]], [2, [0, code, 0]]);
    assert.equal(connack.sessionPresent, false); // [MQTT-3.2.2-6]
    await raw.waitClosed(); // [MQTT-3.2.2-7]
  }
  // Within the limits the will is accepted.
  const { connack } = await rawConnect5(t, broker, {
    clientId: idOnShard(broker, 0, 'ca-will-ok'),
    will: { topic: 'w/q1', payload: 'x', qos: 1 },
  });
  assert.equal(connack.reasonCode, 0);
});

test('an empty client id gets a unique Assigned Client Identifier, with Clean Start 1 and 0, and is used as the id [MQTT-3.1.3-6], [MQTT-3.1.3-7], [MQTT-3.2.2-16]', async (t) => {
  const broker = await shared();
  // Raw CONNECTs: mqtt-packet will not encode an empty client id with Clean Start 0.
  const { connack: a } = await rawConnect5(t, broker, { clientId: '', clean: true });
  const { raw: rawB, connack: b } = await rawConnect5(t, broker, {
    clientId: '',
    clean: false,
    props: [[0x11, 60]],
  });
  for (const c of [a, b]) {
    assert.equal(c.reasonCode, 0);
    assert.equal(c.sessionPresent, false);
    const id = c.properties?.assignedClientIdentifier;
    assert.ok(typeof id === 'string' && id.length > 0, `assigned id ${id}`);
  }
  assert.notEqual(a.properties?.assignedClientIdentifier, b.properties?.assignedClientIdentifier);
  // The CONNECT was processed as if the client had sent the assigned id: its session (expiry 60)
  // is resumed under that id.
  const assigned = b.properties!.assignedClientIdentifier as string;
  rawB.send(subscribeFrame5(1, 'assigned/t', 1));
  const suback = await readFrame(rawB);
  assert.deepEqual([suback.type, [...suback.body]], [9, [0, 1, 0, 1]]); // id 1, no properties, QoS 1
  rawB.send([0xe0, 0]);
  await rawB.waitClosed();
  const { pc, connack } = await PacketClient.connect(t, broker, assigned, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 0 },
  });
  assert.equal(connack.sessionPresent, true);
  assert.equal(connack.properties?.assignedClientIdentifier, undefined);
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'ca-assigned-pub') });
  await publish(pub, 'assigned/t', 'hello', { qos: 1 });
  const m = await pc.expect('publish');
  assert.deepEqual([m.topic, m.payload.toString(), m.qos], ['assigned/t', 'hello', 1]);
});

test('Server Keep Alive is sent when mqtt.server_keepalive is set, and the broker enforces it instead of the client value [MQTT-3.2.2-21], [MQTT-3.1.2-22]', async (t) => {
  const broker = await shared(KEEPALIVE);
  const v3 = await client(t, broker, { clientId: idOnShard(broker, 0, 'ka-v3'), keepalive: 60 });
  // Both silent v5 clients at once (each waits ≥ 1.5 s): closed after 1.5 × the server's 1 s, not
  // the client's 60 s (or never, for keep-alive 0).
  await Promise.all(
    (
      [
        [1, 60],
        [0, 0],
      ] as const
    ).map(async ([shard, keepalive]) => {
      const started = Date.now();
      const { pc, connack } = await PacketClient.connect(
        t,
        broker,
        idOnShard(broker, shard, `ka-v5-${keepalive}`),
        { protocolVersion: 5, keepalive },
      );
      assert.equal(connack.properties?.serverKeepAlive, 1);
      const d = await pc.expect('disconnect', 10_000);
      assert.equal(d.reasonCode, 0x8d);
      await pc.waitClosed();
      assert.ok(Date.now() - started >= 1450, `closed after ${Date.now() - started} ms`);
    }),
  );
  // The 3.1.1 client keeps its own 60 s keep-alive (Server Keep Alive is MQTT 5 only).
  assert.equal(v3.connected, true);
  await within(
    new Promise<void>((resolve) => {
      v3.once('packetreceive', (p) => p.cmd === 'pingresp' && resolve());
      v3.stream.write(Buffer.from([0xc0, 0]));
    }),
    'PINGRESP to the 3.1.1 client',
  );
});

test('Response Information only when requested and configured [MQTT-3.1.2-28]', async (t) => {
  const broker = await shared(KEEPALIVE);
  const cases: [boolean | undefined, string | undefined][] = [
    [true, 'reply/to/'],
    [false, undefined],
    [undefined, undefined],
  ];
  for (const [i, [request, expected]] of cases.entries()) {
    const { connack } = await rawConnect5(t, broker, {
      clientId: idOnShard(broker, i % 2, `ri-${i}`),
      props: request === undefined ? [] : [[0x19, request ? 1 : 0]],
    });
    assert.equal(connack.reasonCode, 0);
    assert.equal(connack.properties?.responseInformation, expected);
  }
});

test('an Authentication Method (enhanced auth, unsupported) is refused with CONNACK 0x8C and the connection closed [MQTT-4.12.0-1], [MQTT-3.2.2-7]', async (t) => {
  const broker = await shared();
  const base = broker.counters.snapshot();
  const { raw, frame, connack } = await rawConnect5(t, broker, {
    clientId: idOnShard(broker, 0, 'auth-m'),
    props: [
      [0x15, 'SCRAM-SHA-1'],
      [0x16, Buffer.from('client-first')],
    ],
  });
  assert.deepEqual([frame.type, [...frame.body]], [2, [0, 0x8c, 0]]);
  assert.equal(connack.reasonCode, 0x8c);
  await raw.waitClosed();
  assert.equal(broker.counters.snapshot().connectRejected - base.connectRejected, 1);
});

test('a malformed v5 CONNECT gets CONNACK 0x81 / 0x82 and the connection is closed [MQTT-3.1.4-1], [MQTT-4.13.1-1], [MQTT-3.2.2-7]', async (t) => {
  const broker = await shared();
  const cases: [string, Connect5Spec, number][] = [
    // §2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
    ['unknown property id 0x7f', { props: Buffer.from([3, 0x7f, 0, 0]) }, 0x81],
    ['Payload Format Indicator (not a CONNECT property)', { props: [[0x01, 1]] }, 0x81],
    // §3.1.2.11: including a single-valued property twice, or Receive Maximum 0, is a Protocol Error.
    [
      'duplicate Session Expiry Interval',
      {
        props: [
          [0x11, 10],
          [0x11, 20],
        ],
      },
      0x82,
    ],
    [
      'duplicate Receive Maximum',
      {
        props: [
          [0x21, 10],
          [0x21, 10],
        ],
      },
      0x82,
    ],
    ['Receive Maximum 0', { props: [[0x21, 0]] }, 0x82],
    ['Maximum Packet Size 0', { props: [[0x27, 0]] }, 0x82],
    ['Request Problem Information 2', { props: [[0x17, 2]] }, 0x82],
    ['property length beyond the packet', { props: Buffer.from([40, 0x11, 0, 0, 0, 1]) }, 0x81],
    [
      'will property not valid for a will (Topic Alias)',
      { will: { topic: 'w', payload: 'p', props: [[0x23, 1]] } },
      0x81,
    ],
  ];
  const base = broker.counters.snapshot();
  for (const [i, [what, spec, code]] of cases.entries()) {
    const raw = await RawClient.connect(t, broker.port);
    raw.send(connectFrame5({ clientId: idOnShard(broker, i % 2, `mal-${i}`), ...spec }));
    const f = await readFrame(raw);
    assert.deepEqual([f.type, [...f.body]], [2, [0, code, 0]], what);
    await raw.waitClosed();
  }
  const d = broker.counters.snapshot();
  assert.equal(d.connectRejected - base.connectRejected, cases.length);
  assert.equal(d.malformedPackets - base.malformedPackets, cases.filter((c) => c[2] === 0x81).length);
  assert.equal(d.protocolErrors - base.protocolErrors, cases.filter((c) => c[2] === 0x82).length);
});

test('MQTT 3.1.1 and 5.0 clients on one broker exchange messages across shards, each in its own format [MQTT-3.1.2-2], [MQTT-3.3.2-17]', async (t) => {
  const broker = await shared();
  const v3 = await client(t, broker, { clientId: idOnShard(broker, 0, 'mix-v3') });
  const v3Inbox = new Inbox(v3);
  const v5 = await client5(t, broker, { clientId: idOnShard(broker, 1, 'mix-v5') });
  assert.equal(v5.connack.reasonCode, 0);
  assert.equal(v5.connack.properties?.receiveMaximum, 32);
  await subscribe(v3, 'mix/#', 1);
  await new Promise<void>((resolve, reject) =>
    v5.c.subscribe('mix/#', { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
  await publish(v3, 'mix/from-v3', 'a', { qos: 1 });
  await new Promise<void>((resolve, reject) =>
    v5.c.publish(
      'mix/from-v5',
      'b',
      { qos: 1, properties: { userProperties: { k: 'v' }, contentType: 'text/plain' } },
      (err) => (err ? reject(err) : resolve()),
    ),
  );
  const v3Got = await v3Inbox.wait(2);
  assert.deepEqual(v3Got.map((m) => [m.topic, m.payload, m.qos]).sort(), [
    ['mix/from-v3', 'a', 1],
    ['mix/from-v5', 'b', 1],
  ]);
  const v5Got = await v5.inbox.wait(2);
  const byTopic = new Map(v5Got.map((p) => [p.topic, p]));
  assert.equal(byTopic.get('mix/from-v3')?.payload.toString(), 'a');
  assert.equal(byTopic.get('mix/from-v3')?.properties, undefined);
  const props = byTopic.get('mix/from-v5')?.properties;
  assert.deepEqual(
    { ...props, userProperties: { ...props?.userProperties } },
    {
      contentType: 'text/plain',
      userProperties: { k: 'v' },
    },
  );
});

/**
 * The connection layer, MQTT 3.1.1 (OASIS) chapter 3.1-3.2: what the accepting shard accepts or
 * refuses as the first packet, and that what follows the CONNECT reaches the owning shard intact.
 */
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { before, type TestContext, test } from 'node:test';
import mqtt from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import type { CounterName } from '../src/metrics/counters.js';
import {
  brokerPool,
  type ConnectSpec,
  client,
  connectFrame,
  Inbox,
  idOnShard,
  mqttString,
  publish,
  RawClient,
  rawConnected,
  rawFrame,
  rawPing,
  readFrame,
  subscribe,
  waitFor,
  within,
} from './helpers/broker.js';

/** Brokers shared by the tests of this file (starting one costs seconds on a loaded machine). */
/** The file's brokers, stopped when its tests are done. */
const fileBroker = brokerPool();
let broker: Broker;
/** One shard, a 1 s connect timeout and the shortest allowed client id limit (23). */
let strict: Broker;

before(async () => {
  [broker, strict] = await Promise.all([
    fileBroker({ 'node.shards': 2 }),
    fileBroker({ 'node.shards': 1, 'listener.connect_timeout': 1, 'mqtt.max_clientid_len': 23 }),
  ]);
});

const CONNACK = (code: number) => Buffer.from([0x20, 2, 0, code]);
const PINGREQ = Buffer.from([0xc0, 0]);

function count(b: Broker, name: CounterName): number {
  return b.counters.snapshot()[name];
}

/**
 * Sends `bytes` as the first thing on a new connection and expects the broker to answer with
 * exactly `reply` (a CONNACK, or nothing) and then close the connection.
 */
async function expectRefused(
  t: TestContext,
  b: Broker,
  bytes: Buffer,
  reply: Buffer | null,
  why: string,
): Promise<void> {
  const rejected = count(b, 'connectRejected');
  const handoffs = count(b, 'handoffs');
  const raw = await RawClient.connect(t, b.port);
  raw.send(bytes);
  await raw.waitClosed();
  assert.equal(
    raw.pending.toString('hex'),
    (reply ?? Buffer.alloc(0)).toString('hex'),
    `${why}: bytes before close`,
  );
  assert.equal(count(b, 'connectRejected'), rejected + 1, `${why}: counted as a refused connection`);
  assert.equal(count(b, 'handoffs'), handoffs, `${why}: never handed to a shard`);
}

/** The same CONNECT encoder is accepted when the violation is absent (so a refusal is not an encoding slip). */
async function expectAccepted(t: TestContext, b: Broker, spec: ConnectSpec): Promise<RawClient> {
  const raw = await rawConnected(t, b, spec);
  await rawPing(raw);
  return raw;
}

test('a valid CONNECT gets CONNACK 0 with session present 0 for clean session [MQTT-3.2.2-1]', async (t) => {
  // Every optional field present: will (QoS 1, retain), user name, password.
  const raw = await expectAccepted(t, broker, {
    clientId: 'accept-1',
    keepalive: 30,
    will: { topic: 'will/accept-1', payload: 'gone', qos: 1, retain: true },
    username: 'user',
    password: Buffer.from([0, 1, 2, 255]),
  });
  raw.send([0xe0, 0]); // DISCONNECT: the will is discarded [MQTT-3.14.4-3], the broker closes [MQTT-3.14.4-1]
  await raw.waitClosed();
  const c = await client(t, broker, { clientId: 'accept-mqttjs' });
  assert.ok(c.connected, 'mqtt.js client connected');
});

test('unsupported protocol level: CONNACK 1 then close [MQTT-3.1.2-2], [MQTT-3.2.2-4], [MQTT-3.2.2-5]', async (t) => {
  for (const [name, level] of [
    ['MQTT', 6],
    ['MQTT', 3],
    ['MQTT', 0],
    ['MQIsdp', 4],
  ] as const) {
    await expectRefused(
      t,
      broker,
      connectFrame({ name, level, clientId: `level-${name}-${level}` }),
      CONNACK(1),
      `${name} level ${level}`,
    );
  }
});

test('after a refusing CONNACK the broker closes the connection even if the client keeps sending [MQTT-3.2.2-5]', async (t) => {
  // allowHalfOpen: the client does not answer the broker's FIN; it goes on writing.
  const s = netConnect({ host: '127.0.0.1', port: strict.port, allowHalfOpen: true });
  t.after(() => s.destroy());
  s.on('error', () => {});
  let got = Buffer.alloc(0);
  s.on('data', (d: Buffer) => {
    got = Buffer.concat([got, d]);
  });
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  s.write(connectFrame({ name: 'MQTT', level: 6, clientId: 'keeps-sending' }));
  const chatter = setInterval(() => s.write(PINGREQ), 50);
  t.after(() => clearInterval(chatter));
  await within(closed, 'the broker to close the refused connection', 15_000);
  assert.equal(got.toString('hex'), CONNACK(1).toString('hex'), 'CONNACK 1 was delivered first');
});

test('MQTT 5 CONNECT is answered in MQTT 5 form: v5 CONNACK 0x84 (unsupported) then close, never a 3.1.1 CONNACK', async (t) => {
  // MQTT 5 support is being added in parallel; until a v5 CONNECT is accepted, the refusal must
  // be one an MQTT 5 client understands: CONNACK 20 03 00 84 00 (reason 0x84, no properties).
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame({ level: 5, clientId: 'v5-raw' }));
  const connack = await readFrame(raw);
  assert.equal(connack.type, 2, 'a CONNACK, not a silent close');
  assert.equal(connack.body[0], 0, 'session present 0');
  if (connack.body[1] === 0) {
    await rawPing(raw); // accepted: then it must be served
    raw.socket.destroy();
  } else {
    assert.equal(
      connack.body.toString('hex'),
      '008400',
      'v5 CONNACK: no session, reason 0x84, property length 0',
    );
    await raw.waitClosed();
    assert.equal(raw.pending.length, 0, 'nothing after the refusal');
  }
  // A real MQTT 5 client sees either a connection or the refusal, reason 132 (0x84).
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: broker.port,
    protocolVersion: 5,
    clientId: 'v5-mqttjs',
    reconnectPeriod: 0,
  });
  t.after(() => c.end(true));
  const outcome = await new Promise<number>((resolve, reject) => {
    c.once('error', (err: Error & { code?: number }) => resolve(err.code ?? -1));
    c.once('connect', () => resolve(0));
    c.once('close', () => reject(new Error('closed without CONNACK')));
  });
  assert.equal(outcome, connack.body[1], 'mqtt.js agrees with the raw CONNACK (0 or 132)');
});

test('wrong protocol name: closed without CONNACK [MQTT-3.1.2-1], [MQTT-3.1.4-1]', async (t) => {
  for (const name of ['MQTX', 'mqtt', 'MQIsdp3', '']) {
    await expectRefused(t, broker, connectFrame({ name, clientId: 'name' }), null, `protocol name '${name}'`);
  }
});

test('reserved connect flag set: closed without CONNACK [MQTT-3.1.2-3]', async (t) => {
  (await expectAccepted(t, broker, { clientId: 'reserved', flags: 0x02 })).socket.destroy();
  await expectRefused(t, broker, connectFrame({ clientId: 'reserved', flags: 0x03 }), null, 'reserved bit');
});

test('will QoS or will retain without the will flag: closed [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]', async (t) => {
  for (const [flags, what] of [
    [0x02 | 0x08, 'will QoS 1'],
    [0x02 | 0x10, 'will QoS 2'],
    [0x02 | 0x20, 'will retain'],
  ] as const) {
    await expectRefused(
      t,
      broker,
      connectFrame({ clientId: 'nowill', flags }),
      null,
      `${what} without will flag`,
    );
  }
});

test('will QoS 3: closed [MQTT-3.1.2-14]', async (t) => {
  const will = { topic: 'will/q', payload: 'x', qos: 2 };
  (await expectAccepted(t, broker, { clientId: 'willq', will })).socket.destroy();
  await expectRefused(
    t,
    broker,
    connectFrame({ clientId: 'willq', will: { ...will, qos: 3 } }),
    null,
    'will QoS 3',
  );
});

test('password flag without user name flag: closed [MQTT-3.1.2-22]', async (t) => {
  (await expectAccepted(t, broker, { clientId: 'pw', username: 'u', password: 'p' })).socket.destroy();
  await expectRefused(
    t,
    broker,
    connectFrame({ clientId: 'pw', password: 'p' }),
    null,
    'password without user name',
  );
});

test('empty client id with clean session 1: accepted with a unique server-assigned id [MQTT-3.1.3-6]', async (t) => {
  const takeovers = count(broker, 'sessionTakenover');
  const a = await expectAccepted(t, broker, { clientId: '', clean: true });
  const b = await expectAccepted(t, broker, { clientId: '', clean: true });
  // Had both been given the same id, the second would have taken the first's session over.
  await rawPing(a);
  await rawPing(b);
  assert.equal(count(broker, 'sessionTakenover'), takeovers, 'no takeover between the two empty-id clients');
  // And such a client is fully served (mqtt.js sends the empty id as given).
  const c = await client(t, broker, { clientId: '', clean: true });
  const inbox = new Inbox(c);
  await subscribe(c, 'anon/echo', 1);
  await publish(c, 'anon/echo', 'hi', { qos: 1 });
  assert.equal((await inbox.wait(1))[0].payload, 'hi');
});

test('empty client id with clean session 0: CONNACK 2 then close [MQTT-3.1.3-8]', async (t) => {
  await expectRefused(
    t,
    broker,
    connectFrame({ clientId: '', clean: false }),
    CONNACK(2),
    'empty id, clean 0',
  );
});

test('client id with ill-formed UTF-8 or U+0000 is not accepted and the connection closed [MQTT-1.5.3-1], [MQTT-1.5.3-2], [MQTT-3.1.3-9]', async (t) => {
  for (const [id, what] of [
    [[0x61, 0xc3, 0x28], 'truncated 2-byte sequence'],
    [[0xed, 0xa0, 0x80], 'UTF-16 surrogate'],
    [[0xc0, 0xaf], 'overlong encoding'],
    [[0xff], 'byte 0xff'],
    [[0x61, 0x00, 0x62], 'U+0000'],
  ] as const) {
    const rejected = count(broker, 'connectRejected');
    const raw = await RawClient.connect(t, broker.port);
    raw.send(connectFrame({ clientId: id }));
    await raw.waitClosed();
    // Either closed at once (malformed string) or refused as an identifier (CONNACK 2, then close).
    assert.ok(
      raw.pending.length === 0 || raw.pending.equals(CONNACK(2)),
      `${what}: got ${raw.pending.toString('hex')} before close`,
    );
    assert.equal(count(broker, 'connectRejected'), rejected + 1, `${what}: refused`);
  }
});

test('client id longer than mqtt.max_clientid_len: CONNACK 2 then close [MQTT-3.1.3-9]', async (t) => {
  (await expectAccepted(t, strict, { clientId: 'x'.repeat(23) })).socket.destroy();
  await expectRefused(t, strict, connectFrame({ clientId: 'x'.repeat(24) }), CONNACK(2), '24-character id');
});

test('a second CONNECT is a protocol violation: connection closed [MQTT-3.1.0-2]', async (t) => {
  const errors = count(broker, 'protocolErrors');
  const raw = await rawConnected(t, broker, { clientId: 'twice' });
  raw.send(connectFrame({ clientId: 'twice' }));
  await raw.waitClosed();
  assert.equal(raw.pending.length, 0, 'no second CONNACK');
  await waitFor(() => count(broker, 'protocolErrors') === errors + 1, 'protocol error counted');
});

test('first packet not CONNECT: closed without CONNACK [MQTT-3.1.0-1], CONNECT flags not 0 [MQTT-2.2.2-2]', async (t) => {
  const cases: [Buffer, string][] = [
    [PINGREQ, 'PINGREQ'],
    [rawFrame(0x30, mqttString('a/b'), 'payload'), 'PUBLISH'],
    [rawFrame(0x82, [0, 1], mqttString('a/#'), [0]), 'SUBSCRIBE'],
    [Buffer.from([0xe0, 0]), 'DISCONNECT'],
    [Buffer.from([0x20, 2, 0, 0]), 'CONNACK'],
    [Buffer.from([0x00, 0]), 'reserved type 0'],
    [
      Buffer.concat([Buffer.from([0x12]), connectFrame({ clientId: 'flags' }).subarray(1)]),
      'CONNECT with flags 2',
    ],
  ];
  for (const [bytes, what] of cases) await expectRefused(t, broker, bytes, null, what);
});

test('no complete CONNECT within listener.connect_timeout: closed (and a client that left first is not counted as refused)', async (t) => {
  // A client that connected properly before the silent ones must be unaffected.
  const good = await rawConnected(t, strict, { clientId: 'timeout-good' });
  const rejected = count(strict, 'connectRejected');
  // One that goes away with half a CONNECT: its connect timer must not fire as a refusal later.
  const gone = await RawClient.connect(t, strict.port);
  gone.send(connectFrame({ clientId: 'timeout-gone' }).subarray(0, 5));
  gone.socket.end();
  await gone.waitClosed();
  const start = performance.now();
  const silent = await RawClient.connect(t, strict.port);
  const partial = await RawClient.connect(t, strict.port);
  partial.send(connectFrame({ clientId: 'timeout-partial' }).subarray(0, 7));
  await Promise.all([silent.waitClosed(), partial.waitClosed()]);
  const elapsed = performance.now() - start;
  assert.ok(elapsed >= 900, `closed after ${elapsed.toFixed(0)} ms: not before the 1 s connect timeout`);
  assert.equal(silent.pending.length + partial.pending.length, 0, 'nothing sent to them');
  // The one that left was accepted earlier, so its timer would have fired before theirs.
  assert.equal(count(strict, 'connectRejected'), rejected + 2, 'exactly the two timed-out clients refused');
  await rawPing(good);
});

test('MQTT 3.1 client (protocol name MQIsdp, level 3) is accepted and served', async (t) => {
  (await expectAccepted(t, broker, { name: 'MQIsdp', level: 3, clientId: 'v31-raw' })).socket.destroy();
  const v31 = await client(t, broker, {
    clientId: idOnShard(broker, 0, 'v31'),
    protocolVersion: 3,
    protocolId: 'MQIsdp',
  });
  const v311 = await client(t, broker, { clientId: idOnShard(broker, 1, 'v311') });
  const inbox = new Inbox(v31);
  assert.deepEqual(await subscribe(v31, 'v31/+', 1), [1]);
  await publish(v311, 'v31/x', 'from 3.1.1', { qos: 1 });
  const [m] = await inbox.wait(1);
  assert.deepEqual([m.topic, m.payload, m.qos], ['v31/x', 'from 3.1.1', 1]);
});

test('packets pipelined in the CONNECT write are handled by the shard after the handoff, in order [MQTT-3.1.0-1]', async (t) => {
  const raw = await RawClient.connect(t, broker.port);
  raw.send(
    Buffer.concat([
      connectFrame({ clientId: 'pipelined-self' }),
      rawFrame(0x82, [0, 7], mqttString('pipe/self'), [1]),
      rawFrame(0x32, mqttString('pipe/self'), [0, 9], 'echo'),
      PINGREQ,
    ]),
  );
  const connack = await readFrame(raw);
  assert.deepEqual([connack.type, [...connack.body]], [2, [0, 0]], 'CONNACK 0 comes first [MQTT-3.2.0-1]');
  // SUBACK, PUBACK, PINGRESP and the echoed PUBLISH, in whatever order the broker sends them
  // (it may deliver a subscription's messages before its SUBACK, §3.8.4).
  const frames = [await readFrame(raw), await readFrame(raw), await readFrame(raw), await readFrame(raw)];
  const byType = (type: number) => frames.filter((f) => f.type === type);
  assert.deepEqual(
    byType(9).map((f) => [...f.body]),
    [[0, 7, 1]],
    'SUBACK for packet id 7 granting QoS 1',
  );
  assert.deepEqual(
    byType(4).map((f) => [...f.body]),
    [[0, 9]],
    'PUBACK for packet id 9',
  );
  assert.equal(byType(13).length, 1, 'PINGRESP');
  const pubs = byType(3);
  assert.equal(pubs.length, 1, 'the PUBLISH was routed to the subscription made before it in the same write');
  assert.ok(pubs[0].body.subarray(pubs[0].body.length - 4).equals(Buffer.from('echo')));
  await rawPing(raw); // and nothing else was pending
});

test('whichever shard accepts a connection, the owner of its client id serves it: adopted in place or handed over with its pipelined bytes', async (t) => {
  // The kernel wakes any shard's acceptor. Client ids alternate between the two shards, so
  // whichever shard accepts, about half are its own and half another's; go on until both
  // ways have been seen a few times.
  const before = broker.counters.snapshot();
  let local = 0;
  let handedOver = 0;
  for (let i = 0; local < 3 || handedOver < 3; i++) {
    assert.ok(i < 200, `after ${i} connections: ${local} adopted in place, ${handedOver} handed over`);
    const id = idOnShard(broker, i % 2, `either-${i}`);
    const topic = `either/${i}`;
    const raw = await RawClient.connect(t, broker.port);
    raw.send(
      Buffer.concat([
        connectFrame({ clientId: id }),
        rawFrame(0x82, [0, 1], mqttString(topic), [0]),
        rawFrame(0x30, mqttString(topic), `m${i}`),
      ]),
    );
    const connack = await readFrame(raw);
    assert.deepEqual([connack.type, [...connack.body]], [2, [0, 0]], `${id}: CONNACK 0 first`);
    // SUBACK and the echoed PUBLISH in either order (the SUBACK waits for the retained lookup).
    const frames = [await readFrame(raw), await readFrame(raw)];
    const pub = frames.find((f) => f.type === 3);
    assert.deepEqual(frames.map((f) => f.type).sort(), [3, 9], `${id}: SUBACK and its own PUBLISH`);
    assert.ok(pub?.body.toString('latin1').endsWith(`m${i}`), 'the pipelined PUBLISH, intact');
    raw.socket.destroy();
    const now = broker.counters.snapshot();
    const adopted = now.handoffs - before.handoffs;
    handedOver = now.handoffsCrossShard - before.handoffsCrossShard;
    local = adopted - handedOver;
    assert.equal(adopted, i + 1, 'every connection adopted exactly once');
  }
});

test('a large pipelined write (CONNECT + 100 PUBLISH, ~200 kB) then more writes: nothing lost, order kept [MQTT-4.6.0-2], [MQTT-4.6.0-6]', async (t) => {
  const sub = await client(t, broker, { clientId: idOnShard(broker, 0, 'bulk-sub') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'bulk/#', 1);
  const n = 100;
  const pad = Buffer.alloc(2000, 0x2e);
  const publishes = Array.from({ length: n }, (_, i) =>
    rawFrame(0x32, mqttString(`bulk/${i % 7}`), [(i + 1) >> 8, (i + 1) & 0xff], `m${i};`, pad),
  );
  const raw = await RawClient.connect(t, broker.port);
  raw.socket.setNoDelay(true);
  raw.send(Buffer.concat([connectFrame({ clientId: idOnShard(broker, 1, 'bulk-pub') }), ...publishes]));
  raw.send(rawFrame(0x32, mqttString('bulk/last'), [0, n + 1], 'last;'));
  const connack = await readFrame(raw);
  assert.deepEqual([connack.type, [...connack.body]], [2, [0, 0]]);
  const acks: number[] = [];
  for (let i = 0; i <= n; i++) {
    const f = await readFrame(raw);
    assert.equal(f.type, 4, 'only PUBACKs follow');
    acks.push(f.body.readUInt16BE(0));
  }
  assert.deepEqual(
    acks,
    Array.from({ length: n + 1 }, (_, i) => i + 1),
    'PUBACKs in PUBLISH order',
  );
  const got = await inbox.wait(n + 1);
  assert.deepEqual(
    got.map((m) => m.payload.slice(0, m.payload.indexOf(';'))),
    [...Array.from({ length: n }, (_, i) => `m${i}`), 'last'],
  );
});

test('CONNECT (2-byte remaining length) and the SUBSCRIBE after it, sent one byte per TCP read', async (t) => {
  const id = idOnShard(broker, 1, `split-${'y'.repeat(120)}`);
  const connect = connectFrame({ clientId: id });
  assert.ok(connect[1] & 0x80, 'remaining length takes 2 bytes');
  const bytes = Buffer.concat([connect, rawFrame(0x82, [0, 3], mqttString('split/#'), [2])]);
  const raw = await RawClient.connect(t, broker.port);
  raw.socket.setNoDelay(true);
  for (let i = 0; i < bytes.length; i++) {
    const before = count(broker, 'bytesReceived');
    raw.send(bytes.subarray(i, i + 1));
    // Wait until the broker (main before the handoff, the shard after it) has read this byte,
    // so every byte is its own read on the broker side.
    await waitFor(() => count(broker, 'bytesReceived') > before, `byte ${i} to be read`);
  }
  const connack = await readFrame(raw);
  assert.deepEqual([connack.type, [...connack.body]], [2, [0, 0]]);
  const suback = await readFrame(raw);
  assert.deepEqual([suback.type, [...suback.body]], [9, [0, 3, 2]], 'SUBACK granting QoS 2');
  await rawPing(raw);
});

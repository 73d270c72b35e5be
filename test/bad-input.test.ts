/**
 * Malformed packets and protocol violations (MQTT 3.1.1 §2, §3, §4.8): each one closes only the
 * offending connection [MQTT-4.8.0-1], is counted, and leaves the broker serving everybody else.
 * Ends with a fuzz run (FUZZ_SECONDS, default 5) of random bytes on many connections.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { before, type TestContext, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import type { CounterName } from '../src/metrics/counters.js';
import {
  assertBrokerServes,
  brokerPool,
  client,
  connectFrame,
  idOnShard,
  mqttString,
  publish,
  RawClient,
  rawConnected,
  rawFrame,
  rawPing,
  readFrame,
  waitFor,
} from './helpers/broker.js';

const MAX_PACKET = 1024;
/** The file's brokers, stopped when its tests are done. */
const fileBroker = brokerPool();
let broker: Broker;
before(async () => {
  broker = await fileBroker({ 'node.shards': 2, 'mqtt.max_packet_size': MAX_PACKET });
});

type Kind = 'malformedPackets' | 'protocolErrors' | 'oversizedPackets';
const KINDS: Kind[] = ['malformedPackets', 'protocolErrors', 'oversizedPackets'];

function snap(): Record<CounterName, number> {
  return broker.counters.snapshot();
}

let seq = 0;

/**
 * Connects (CONNACK 0), sends `bytes` and expects: the connection closed with nothing sent back,
 * exactly one more `kind` counted (and no other kind), and no shard restart.
 */
async function expectClosed(t: TestContext, bytes: Buffer, kind: Kind, what: string): Promise<void> {
  const raw = await rawConnected(t, broker, { clientId: idOnShard(broker, seq++ % 2, 'bad') });
  const before = snap();
  raw.send(bytes);
  await raw.waitClosed().catch(() => assert.fail(`${what}: connection was not closed`));
  assert.equal(raw.pending.length, 0, `${what}: nothing sent in answer`);
  await waitFor(() => snap()[kind] > before[kind], `${what}: ${kind} counted`).catch(() =>
    assert.fail(
      `${what}: not counted as ${kind}: ${JSON.stringify(pick(snap()))} vs ${JSON.stringify(pick(before))}`,
    ),
  );
  const now = snap();
  for (const k of KINDS) assert.equal(now[k], before[k] + (k === kind ? 1 : 0), `${what}: ${k}`);
  assert.equal(now.shardRestarts, 0, `${what}: no shard restarted`);
}

function pick(s: Record<CounterName, number>): Record<string, number> {
  return Object.fromEntries(KINDS.map((k) => [k, s[k]]));
}

/** As the first packet: refused by the acceptor (closed, nothing sent, never adopted by a shard). */
async function expectRefusedFirst(t: TestContext, bytes: Buffer, kind: Kind, what: string): Promise<void> {
  const before = snap();
  const raw = await RawClient.connect(t, broker.port);
  raw.send(bytes);
  await raw.waitClosed().catch(() => assert.fail(`${what}: connection was not closed`));
  assert.equal(raw.pending.length, 0, `${what}: nothing sent in answer`);
  const now = snap();
  assert.equal(now.connectRejected, before.connectRejected + 1, `${what}: refused`);
  assert.equal(now.handoffs, before.handoffs, `${what}: not handed to a shard`);
  for (const k of KINDS) assert.equal(now[k], before[k] + (k === kind ? 1 : 0), `${what}: ${k}`);
}

test('invalid fixed-header flags close the connection [MQTT-2.2.2-2]', async (t) => {
  const cases: [Buffer, string][] = [
    [rawFrame(0x80, [0, 1], mqttString('a'), [0]), 'SUBSCRIBE with flags 0 [MQTT-3.8.1-1]'],
    [rawFrame(0x8a, [0, 1], mqttString('a'), [0]), 'SUBSCRIBE with flags 0xa [MQTT-3.8.1-1]'],
    [Buffer.from([0x60, 2, 0, 1]), 'PUBREL with flags 0 [MQTT-3.6.1-1]'],
    [rawFrame(0xa0, [0, 1], mqttString('a')), 'UNSUBSCRIBE with flags 0 [MQTT-3.10.1-1]'],
    [Buffer.from([0x42, 2, 0, 1]), 'PUBACK with flags 2'],
    [Buffer.from([0x71, 2, 0, 1]), 'PUBCOMP with flags 1'],
    [Buffer.from([0xc8, 0]), 'PINGREQ with flags 8'],
    [Buffer.from([0xe1, 0]), 'DISCONNECT with flags 1'],
  ];
  for (const [bytes, what] of cases) await expectClosed(t, bytes, 'malformedPackets', what);
  await assertBrokerServes(t, broker);
});

test('PUBLISH with QoS 3 closes the connection [MQTT-3.3.1-4]', async (t) => {
  await expectClosed(t, rawFrame(0x36, mqttString('q/3'), [0, 1], 'x'), 'malformedPackets', 'QoS 3');
  await expectClosed(t, rawFrame(0x3e, mqttString('q/3'), [0, 1], 'x'), 'malformedPackets', 'QoS 3 + DUP');
  await assertBrokerServes(t, broker);
});

test('PUBLISH topic with a wildcard, empty, or U+0000 closes the connection [MQTT-3.3.2-2], [MQTT-4.7.3-1], [MQTT-1.5.3-2]', async (t) => {
  for (const topic of ['a/+', 'a/#', '#', '+', 'a/b+']) {
    await expectClosed(
      t,
      rawFrame(0x30, mqttString(topic), 'x'),
      'protocolErrors',
      `topic '${topic}' (QoS 0)`,
    );
  }
  await expectClosed(
    t,
    rawFrame(0x32, mqttString('w/+/x'), [0, 1], 'x'),
    'protocolErrors',
    'wildcard (QoS 1)',
  );
  await expectClosed(t, rawFrame(0x32, mqttString(''), [0, 1], 'x'), 'protocolErrors', 'empty topic');
  await expectClosed(
    t,
    rawFrame(0x30, mqttString([0x61, 0, 0x62]), 'x'),
    // A Malformed Packet in MQTT 5 terms [MQTT-1.5.4-2], counted as such for both versions.
    'malformedPackets',
    'U+0000 in topic',
  );
  await assertBrokerServes(t, broker);
});

test('PUBLISH topic with ill-formed UTF-8 closes the connection [MQTT-1.5.3-1]', async (t) => {
  for (const [bytes, what] of [
    [[0x61, 0xff], 'byte 0xff'],
    [[0xc3, 0x28], 'bad continuation byte'],
    [[0xc0, 0xaf], 'overlong /'],
    [[0xed, 0xa0, 0x80], 'UTF-16 surrogate'],
    [[0x61, 0xe2, 0x82], 'truncated sequence'],
  ] as const) {
    await expectClosed(t, rawFrame(0x30, mqttString(bytes), 'x'), 'malformedPackets', what);
  }
  await assertBrokerServes(t, broker);
});

test('other malformed PUBLISH: DUP on QoS 0 [MQTT-3.3.1-2], packet id 0 [MQTT-2.3.1-1]', async (t) => {
  await expectClosed(t, rawFrame(0x38, mqttString('d/0'), 'x'), 'malformedPackets', 'DUP with QoS 0');
  await expectClosed(
    t,
    rawFrame(0x32, mqttString('p/0'), [0, 0], 'x'),
    'malformedPackets',
    'QoS 1 packet id 0',
  );
  await assertBrokerServes(t, broker);
});

test('a remaining length of 5 bytes is malformed and closes the connection (§2.2.3) [MQTT-4.8.0-1]', async (t) => {
  await expectClosed(
    t,
    Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
    'malformedPackets',
    'after CONNECT',
  );
  await expectClosed(
    t,
    Buffer.from([0xc0, 0x80, 0x80, 0x80, 0x80, 0x00]),
    'malformedPackets',
    'PINGREQ, zero-padded',
  );
  await expectRefusedFirst(
    t,
    Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
    'malformedPackets',
    'CONNECT (acceptor)',
  );
  await assertBrokerServes(t, broker);
});

test(`a packet larger than mqtt.max_packet_size (${MAX_PACKET}) closes the connection`, async (t) => {
  // Exactly at the limit is accepted (and routed); one byte more is not.
  const raw = await rawConnected(t, broker, { clientId: 'max-size-ok' });
  const topic = mqttString('size/limit');
  const atLimit = rawFrame(0x32, topic, [0, 1], Buffer.alloc(MAX_PACKET - 3 - topic.length - 2, 0x61));
  assert.equal(atLimit.length, MAX_PACKET);
  raw.send(atLimit);
  const puback = await readFrame(raw);
  assert.deepEqual(
    [puback.type, [...puback.body]],
    [4, [0, 1]],
    'PUBLISH of exactly the maximum size is acknowledged',
  );
  raw.socket.destroy();

  const over = rawFrame(0x32, topic, [0, 1], Buffer.alloc(MAX_PACKET - 3 - topic.length - 2 + 1, 0x61));
  assert.equal(over.length, MAX_PACKET + 1);
  await expectClosed(t, over, 'oversizedPackets', 'one byte too large');
  // Refused as soon as the fixed header announces it: the 1 MB body is never sent.
  await expectClosed(t, Buffer.from([0x30, 0x80, 0x80, 0x40]), 'oversizedPackets', 'announced 1 MB');
  await expectRefusedFirst(
    t,
    connectFrame({ clientId: 'c'.repeat(MAX_PACKET) }),
    'oversizedPackets',
    'oversized CONNECT (acceptor)',
  );
  await assertBrokerServes(t, broker);
});

test('packets only a server sends are a protocol violation from a client [MQTT-4.8.0-1]', async (t) => {
  const cases: [Buffer, string][] = [
    [Buffer.from([0x20, 2, 0, 0]), 'CONNACK'],
    [rawFrame(0x90, [0, 1, 0]), 'SUBACK'],
    [Buffer.from([0xb0, 2, 0, 1]), 'UNSUBACK'],
    [Buffer.from([0xd0, 0]), 'PINGRESP'],
    [Buffer.from([0xf0, 0]), 'AUTH (reserved in 3.1.1)'],
  ];
  for (const [bytes, what] of cases) await expectClosed(t, bytes, 'protocolErrors', what);
  await assertBrokerServes(t, broker);
});

test('SUBSCRIBE: invalid filters get 0x80, the valid ones in the same packet are granted and work [MQTT-3.8.4-5], [MQTT-3.9.3-2], [MQTT-4.7.1-2], [MQTT-4.7.1-3]', async (t) => {
  const before = snap();
  const raw = await rawConnected(t, broker, { clientId: idOnShard(broker, 0, 'filters') });
  const subs: [string, number, number][] = [
    ['a/#/b', 1, 0x80],
    ['ok/1', 1, 1],
    ['a+', 0, 0x80],
    ['ok/+/2', 2, 2],
    ['', 1, 0x80],
    ['ok/#', 0, 0],
    ['sport+', 1, 0x80],
    ['x#', 0, 0x80],
    ['+/+/+/q', 1, 1],
  ];
  raw.send(rawFrame(0x82, [0, 42], ...subs.flatMap(([f, q]) => [mqttString(f), [q]])));
  const suback = await readFrame(raw);
  assert.equal(suback.type, 9);
  assert.deepEqual(
    [...suback.body],
    [0, 42, ...subs.map(([, , code]) => code)],
    'one return code per filter, in order',
  );
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'filters-pub') });
  await publish(pub, 'ok/1', 'one', { qos: 1 });
  await publish(pub, 'ok/x/2', 'two', { qos: 1 });
  const got: string[] = [];
  for (let i = 0; i < 2; i++) {
    const f = await readFrame(raw);
    assert.equal(f.type, 3, 'PUBLISH');
    const tlen = f.body.readUInt16BE(0);
    got.push(f.body.subarray(2, 2 + tlen).toString());
    if ((f.flags >> 1) & 3) raw.send([0x40, 2, f.body[2 + tlen], f.body[3 + tlen]]);
  }
  assert.deepEqual(got, ['ok/1', 'ok/x/2'], 'delivered once each through the granted filters');
  await rawPing(raw);
  const now = snap();
  for (const k of KINDS) assert.equal(now[k], before[k], `a refused filter is not a violation (${k})`);
});

test('SUBSCRIBE with requested QoS 3 or reserved option bits closes the connection [MQTT-3.8.3-4]', async (t) => {
  await expectClosed(
    t,
    rawFrame(0x82, [0, 1], mqttString('q/3'), [3]),
    'malformedPackets',
    'requested QoS 3',
  );
  await expectClosed(
    t,
    rawFrame(0x82, [0, 1], mqttString('q/r'), [0x05]),
    'malformedPackets',
    'reserved bit 2',
  );
  await expectClosed(
    t,
    rawFrame(0x82, [0, 1], mqttString('q/ok'), [1], mqttString('q/3'), [3]),
    'malformedPackets',
    'QoS 3 on the second filter',
  );
  await assertBrokerServes(t, broker);
});

test('truncated packets (fields running past the remaining length) close the connection', async (t) => {
  const cases: [Buffer, string][] = [
    [Buffer.from([0x40, 1, 0]), 'PUBACK with 1 byte'],
    [Buffer.from([0x50, 3, 0, 1, 0]), 'PUBREC with 3 bytes'],
    [Buffer.from([0x62, 0]), 'PUBREL with no packet id'],
    [rawFrame(0x30, [0]), 'PUBLISH with half a topic length'],
    [rawFrame(0x30, [0, 50], 'abc'), 'PUBLISH topic longer than the packet'],
    [rawFrame(0x32, mqttString('t/1')), 'QoS 1 PUBLISH without packet id'],
    [rawFrame(0x82, [0, 1], mqttString('a')), 'SUBSCRIBE filter without QoS byte'],
    [rawFrame(0x82, [0, 1], [0, 10], 'ab'), 'SUBSCRIBE filter longer than the packet'],
    [rawFrame(0x82, [0]), 'SUBSCRIBE with half a packet id'],
    [rawFrame(0x82, [0, 1]), 'SUBSCRIBE without filters [MQTT-3.8.3-3]'],
    [rawFrame(0xa2, [0, 1]), 'UNSUBSCRIBE without filters [MQTT-3.10.3-2]'],
    [rawFrame(0xa2, [0, 1], [0, 9], 'a'), 'UNSUBSCRIBE filter longer than the packet'],
    [Buffer.from([0xe0, 1, 0]), 'DISCONNECT with a body'],
    [Buffer.from([0xc0, 1, 0]), 'PINGREQ with a body'],
  ];
  for (const [bytes, what] of cases) await expectClosed(t, bytes, 'malformedPackets', what);
  // A CONNECT whose remaining length ends inside the client id: refused by the acceptor.
  const connect = connectFrame({ clientId: 'truncated' });
  const short = Buffer.concat([Buffer.from([0x10, connect[1] - 3]), connect.subarray(2, connect.length - 3)]);
  await expectRefusedFirst(t, short, 'malformedPackets', 'CONNECT cut inside the client id (acceptor)');
  await assertBrokerServes(t, broker);
});

// ---------------------------------------------------------------------------------------------
// Fuzz

const FUZZ_SECONDS = Number(process.env.FUZZ_SECONDS ?? 5);
const FUZZ_CONNECTIONS = Number(process.env.FUZZ_CONNECTIONS ?? 50);

/** Small seeded PRNG (mulberry32) so that a failing run can be replayed with FUZZ_SEED. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (((x ^ (x >>> 14)) >>> 0) % n) | 0;
  };
}

type Rnd = (n: number) => number;

function junk(r: Rnd, max: number): Buffer {
  const b = Buffer.alloc(r(max + 1));
  for (let i = 0; i < b.length; i++) b[i] = r(256);
  return b;
}

const TOPICS: (string | number[])[] = [
  'fuzz/a',
  'fuzz/b/c',
  'fuzz/+',
  '#',
  '',
  '$SYS/x',
  'fuzz//',
  '/',
  [0xff, 0x61],
  [0x61, 0],
];
const FILTERS: (string | number[])[] = [
  'fuzz/#',
  'fuzz/+',
  '#',
  '+/+',
  'a/#/b',
  '',
  'x+',
  '$SYS/#',
  [0xc3, 0x28],
];

function pickBytes(r: Rnd, pool: (string | number[])[]): Buffer {
  if (r(8) === 0) return junk(r, 12);
  const v = pool[r(pool.length)];
  return typeof v === 'string' ? Buffer.from(v) : Buffer.from(v);
}

/** A random frame after CONNECT: mostly well framed, often plausible, sometimes garbage. */
function randomFrame(r: Rnd): Buffer {
  switch (r(9)) {
    case 0:
      return junk(r, 48);
    case 1:
    case 2: {
      const flags = r(4) === 0 ? r(16) : (r(3) << 1) | r(2);
      const qos = (flags >> 1) & 3;
      return rawFrame(
        0x30 | flags,
        mqttString(pickBytes(r, TOPICS)),
        qos > 0 ? [0, 1 + r(20)] : [],
        junk(r, r(10) === 0 ? 1500 : 64),
      );
    }
    case 3: {
      const parts: (Buffer | number[])[] = [[0, 1 + r(20)]];
      for (let i = r(4); i >= 0; i--)
        parts.push(mqttString(pickBytes(r, FILTERS)), [r(6) === 0 ? r(256) : r(3)]);
      return rawFrame(0x82, ...parts);
    }
    case 4:
      return rawFrame(0xa2, [0, 1 + r(20)], mqttString(pickBytes(r, FILTERS)));
    case 5: {
      const type = 4 + r(4);
      return rawFrame((type << 4) | (type === 6 ? 2 : 0), [0, 1 + r(20)], r(8) === 0 ? [r(256)] : []);
    }
    case 6:
      return r(30) === 0 ? Buffer.from([0xe0, 0]) : Buffer.from([0xc0, 0]);
    case 7:
      return rawFrame(r(256), junk(r, 64));
    default: {
      // A frame cut short or with a broken remaining length.
      const f = rawFrame(0x30, mqttString('fuzz/cut'), junk(r, 300));
      if (r(2) === 0) return f.subarray(0, r(f.length));
      return Buffer.from([0x30, 0x80 | r(128), 0x80 | r(128), 0x80 | r(128), 0x80 | r(128), r(256)]);
    }
  }
}

function randomConnect(r: Rnd): Buffer {
  return connectFrame({
    clientId: `fuzz-${r(40)}`,
    clean: r(2) === 0,
    keepalive: r(4),
    will:
      r(3) === 0
        ? { topic: `fuzz/will/${r(5)}`, payload: junk(r, 16), qos: r(3), retain: r(2) === 0 }
        : undefined,
    username: r(4) === 0 ? 'u' : undefined,
  });
}

/** Garbage for the acceptor: random bytes, or a CONNECT with a few bytes flipped. */
function randomFirstBytes(r: Rnd): Buffer {
  if (r(2) === 0) return junk(r, 64);
  const c = Buffer.from(randomConnect(r));
  for (let i = 1 + r(3); i > 0; i--) c[r(c.length)] = r(256);
  return Buffer.concat([c, r(2) === 0 ? junk(r, 64) : Buffer.alloc(0)]);
}

async function fuzzOnce(port: number, r: Rnd, viaShard: boolean, deadline: number): Promise<void> {
  const s = netConnect({ host: '127.0.0.1', port });
  s.setNoDelay(true);
  s.on('error', () => {});
  s.on('data', () => {});
  let closed = false;
  // Plain listeners, not events.once: that one rejects on 'error' (resets are expected here).
  const closedP = new Promise<void>((res) =>
    s.once('close', () => {
      closed = true;
      res();
    }),
  );
  try {
    await Promise.race([new Promise((res) => s.once('connect', res)), closedP]);
    if (closed) return;
    s.write(viaShard ? randomConnect(r) : randomFirstBytes(r));
    for (let i = r(12); i > 0 && !closed && performance.now() < deadline; i--) {
      const frames: Buffer[] = [];
      for (let k = 1 + r(4); k > 0; k--) frames.push(viaShard ? randomFrame(r) : junk(r, 64));
      s.write(Buffer.concat(frames));
      await new Promise((res) => setImmediate(res));
    }
    await Promise.race([closedP, new Promise((res) => setTimeout(res, 20 + r(80)))]);
  } finally {
    s.destroy();
  }
}

test(`fuzz: ${FUZZ_SECONDS} s of random bytes on ${FUZZ_CONNECTIONS} concurrent connections leaves the broker serving, no shard restarted`, {
  timeout: FUZZ_SECONDS * 1000 + 60_000,
}, async (t) => {
  const seed = Number(process.env.FUZZ_SEED ?? randomBytes(4).readUInt32BE(0));
  t.diagnostic(`FUZZ_SEED=${seed}`);
  // The broker's main thread is this process: anything it throws while fuzzed lands here (an
  // acceptor or session that throws would restart its shard, checked below).
  const crashes: unknown[] = [];
  const onCrash = (err: unknown) => crashes.push(err);
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
  t.after(() => {
    process.off('uncaughtException', onCrash);
    process.off('unhandledRejection', onCrash);
  });
  const before = snap();
  const deadline = performance.now() + FUZZ_SECONDS * 1000;
  // The fuzz runs FUZZ_SECONDS, and then on until it has reached what the assertions below say
  // it reaches (on a loaded machine 5 s of it can hand only a dozen connections to the shards):
  // coverage does not depend on the machine's speed. Past `hardStop` it gives up and they fail.
  const hardStop = deadline + 30_000;
  const covered = (): boolean => {
    const n = snap();
    return (
      n.handoffs - before.handoffs >= FUZZ_CONNECTIONS / 2 &&
      n.connectRejected > before.connectRejected &&
      n.malformedPackets + n.protocolErrors > before.malformedPackets + before.protocolErrors
    );
  };
  const going = (): boolean => performance.now() < deadline || (performance.now() < hardStop && !covered());
  let opened = 0;
  await Promise.all(
    Array.from({ length: FUZZ_CONNECTIONS }, async (_, i) => {
      const r = prng(seed + i);
      while (going()) {
        opened++;
        // Half the connections get past CONNECT and fuzz a session, half fuzz the acceptors.
        await fuzzOnce(broker.port, r, i % 2 === 0, Math.max(deadline, performance.now() + 1000));
      }
    }),
  );
  const now = snap();
  const delta = (k: CounterName) => now[k] - before[k];
  t.diagnostic(
    `seed ${seed}: ${opened} connections; handoffs ${delta('handoffs')}, refused ${delta('connectRejected')}, ` +
      `malformed ${delta('malformedPackets')}, protocol errors ${delta('protocolErrors')}, oversized ` +
      `${delta('oversizedPackets')}, keep-alive timeouts ${delta('keepaliveTimeouts')}, takeovers ${delta('sessionTakenover')}, ` +
      `wills ${delta('willsPublished')}, messages in ${delta('messagesReceived')} / out ${delta('messagesSent')}`,
  );
  assert.deepEqual(
    crashes.map(String).slice(0, 3),
    [],
    `no uncaught error in the main thread (FUZZ_SEED=${seed})`,
  );
  assert.equal(now.shardRestarts, 0, `no shard restarted (FUZZ_SEED=${seed})`);
  assert.ok(broker.supervisor.allReady, 'all shards up');
  // The fuzz did reach both the acceptors and the sessions.
  assert.ok(delta('handoffs') >= FUZZ_CONNECTIONS / 2, 'connections were handed to shards');
  assert.ok(delta('connectRejected') > 0, 'the acceptors refused garbage');
  assert.ok(delta('malformedPackets') + delta('protocolErrors') > 0, 'the shards saw violations');
  await assertBrokerServes(t, broker);
  const raw = await rawConnected(t, broker, { clientId: 'after-fuzz' });
  await rawPing(raw);
});

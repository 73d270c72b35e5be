/**
 * MQTT 5 interoperability: Eclipse Paho for Python (python3-paho-mqtt, MQTTv5) and mqtt.js
 * (protocolVersion 5) through the real broker, publisher and subscriber on different shards.
 * Paho is required, not optional: a missing one fails with the Debian package to install.
 * Cited: OASIS MQTT Version 5.0, normative statements [MQTT-x.x.x-y].
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import type { Ctx } from './helpers/base.js';
import {
  client5,
  exited,
  idOnShard,
  mqttString,
  parsePublish5,
  props5,
  publish5,
  rawConnect5,
  rawFrame,
  readFrame,
  startBroker,
  subscribe5,
  waitForPacket,
} from './helpers/broker.js';
import { PAHO5_SCRIPT, type Proc, paho as pahoScript } from './helpers/paho.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;

let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} }, { 'node.shards': 2 });
});
after(() => broker?.stop());

function paho(t: Ctx, clientId: string, ...args: string[]): Proc {
  return pahoScript(t, PAHO5_SCRIPT, broker.port, clientId, ...args);
}

const json = (line: string) => JSON.parse(line) as Record<string, unknown>;
const events = (p: Proc, event: string) => p.out.lines.map(json).filter((e) => e.event === event);

async function ok(p: Proc, what: string): Promise<void> {
  const { code } = await exited(p.child, 25_000);
  assert.equal(code, 0, `${what} exited ${code}:\n${p.out.text}\n${p.err.text}`);
}

test('Paho MQTTv5 publishes with user properties at QoS 0, 1, 2 to mqtt.js v5 and raw v5 subscribers', {
  timeout: T,
}, async (t) => {
  const js = await client5(t, broker, { clientId: idOnShard(broker, 0, 'i5-js-sub') });
  assert.deepEqual(await subscribe5(js.c, 'i5/out/+', { qos: 2, subscriptionIdentifier: 11 }), [2]);
  const { raw } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 0, 'i5-raw-sub') });
  raw.send(rawFrame(0x82, [0, 1], props5([]), mqttString('i5/out/q1'), [1]));
  assert.deepEqual([...(await readFrame(raw)).body], [0, 1, 0, 1]);

  const user = [
    ['origin', 'paho'],
    ['k', 'first'],
    ['k', 'second'],
  ];
  const messages = [0, 1, 2].map((qos) => ({
    topic: `i5/out/q${qos}`,
    payload: `from paho q${qos}`,
    qos,
    user,
    ...(qos === 1 ? { content_type: 'text/plain', correlation: '00ff10' } : {}),
  }));
  const pub = paho(t, idOnShard(broker, 1, 'i5-paho-pub'), 'pub', JSON.stringify(messages));
  await ok(pub, 'paho pub');
  assert.equal(events(pub, 'published').length, 3, pub.out.text);

  // mqtt.js: each at its QoS (granted 2) with the user properties [MQTT-3.3.2-17] and its
  // Subscription Identifier [MQTT-3.3.4-3].
  for (const m of messages) {
    const p = await waitForPacket(js.inbox, (x) => x.topic === m.topic, m.topic);
    assert.deepEqual(
      [p.payload.toString(), p.qos, p.retain, p.properties?.subscriptionIdentifier],
      [m.payload, m.qos, false, 11],
    );
    assert.deepEqual({ ...p.properties?.userProperties }, { origin: 'paho', k: ['first', 'second'] });
    if (m.qos === 1) {
      assert.equal(p.properties?.contentType, 'text/plain');
      assert.deepEqual(p.properties?.correlationData, Buffer.from('00ff10', 'hex'));
    }
  }
  // On the wire: the user properties in the order Paho sent them [MQTT-3.3.2-18].
  const w = parsePublish5(await readFrame(raw));
  assert.deepEqual([w.topic, w.qos, w.payload.toString()], ['i5/out/q1', 1, 'from paho q1']);
  assert.deepEqual(
    w.props.filter(([id]) => id === 0x26),
    user.map((u) => [0x26, u]),
  );
  assert.deepEqual(
    w.props.filter(([id]) => id === 0x03 || id === 0x09),
    [
      [0x03, 'text/plain'],
      [0x09, Buffer.from('00ff10', 'hex')],
    ],
  );
});

test('mqtt.js v5 publishes to a Paho MQTTv5 subscriber with a Subscription Identifier and No Local [MQTT-3.8.3-3] [MQTT-3.3.4-3]', {
  timeout: T,
}, async (t) => {
  const droppedNoLocal = broker.counters.snapshot().deliveryDroppedNoLocal;
  const sub = paho(
    t,
    idOnShard(broker, 0, 'i5-paho-sub'),
    'sub',
    'i5/in/#',
    '2',
    '3',
    '--sub-id',
    '42',
    '--no-local',
    '--self-publish',
    'i5/in/own',
    'from paho itself',
  );
  const subscribed = json(await sub.out.waitFor((l) => l.includes('"subscribed"'), 'paho SUBACK', 20_000));
  assert.deepEqual(subscribed.reason_codes, [2]);
  // Its own message would be delivered before the PUBACK it waits for (same connection, routed
  // before the ack): once it reports self-published, anything of its own would have been seen.
  await sub.out.waitFor((l) => l.includes('"self-published"'), 'paho own PUBACK', 20_000);
  // The broker saw Paho's No Local option: it skipped exactly that one delivery.
  assert.equal(broker.counters.snapshot().deliveryDroppedNoLocal, droppedNoLocal + 1);

  const js = await client5(t, broker, { clientId: idOnShard(broker, 1, 'i5-js-pub') });
  for (const qos of [0, 1, 2] as const) {
    await publish5(js.c, `i5/in/q${qos}`, `from mqtt.js q${qos}`, {
      qos,
      properties: { userProperties: { via: 'mqtt.js', n: [`${qos}`, 'x'] }, contentType: 'text/plain' },
    });
  }
  await ok(sub, 'paho sub');
  const got = events(sub, 'message');
  // Paho hands QoS 2 to the application at PUBREL: compare the set.
  assert.deepEqual(
    got
      .map((e) => [e.topic, e.payload, e.qos, e.retain, e.sub_ids, e.user, e.content_type])
      .sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
    [0, 1, 2].map((qos) => [
      `i5/in/q${qos}`,
      `from mqtt.js q${qos}`,
      qos,
      false,
      [42],
      [
        ['via', 'mqtt.js'],
        ['n', `${qos}`],
        ['n', 'x'],
      ],
      'text/plain',
    ]),
    'No Local: not its own message; each with Subscription Identifier 42 and the user properties',
  );
});

/**
 * Interoperability with other MQTT 3.1.1 implementations against the real broker: the Mosquitto
 * command-line clients (C, libmosquitto) and Eclipse Paho for Python, next to mqtt.js.
 * They are required, not optional: CI installs the Debian packages mosquitto-clients and
 * python3-paho-mqtt, and a missing one fails with the package to install.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import type { Ctx } from './helpers/base.js';
import {
  client,
  exited,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  waitForMessage,
} from './helpers/broker.js';
import { PAHO_SCRIPT, type Proc, pahoPython, run } from './helpers/paho.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;

function requireTool(cmd: string, pkg: string): void {
  const r = spawnSync(cmd, ['--help'], { encoding: 'utf8' });
  assert.ok(
    !r.error,
    `${cmd} is not installed: install the Debian/Ubuntu package ${pkg} (apt-get install ${pkg})`,
  );
}

let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} });
});
after(() => broker?.stop());

/** Runs a command to completion; fails with its output unless it exits 0. */
async function runOk(t: Ctx, cmd: string, args: string[]): Promise<Proc> {
  const p = run(t, cmd, args);
  const { code } = await exited(p.child, 20_000);
  assert.equal(code, 0, `${cmd} ${args.join(' ')} exited ${code}:\n${p.out.text}\n${p.err.text}`);
  return p;
}

/** Connection arguments for mosquitto_pub/sub; fails the test if they are not installed. */
function mosq(): string[] {
  requireTool('mosquitto_sub', 'mosquitto-clients');
  requireTool('mosquitto_pub', 'mosquitto-clients');
  return ['-h', '127.0.0.1', '-p', String(broker.port), '-V', 'mqttv311'];
}

/** A mosquitto_sub -d debug line "received PUBLISH (d0, q1, r0, m1, 'topic', ..." parsed. */
function receivedPublish(line: string): { qos: number; retain: boolean; topic: string } | null {
  const m = /received PUBLISH \(d\d, q(\d), r(\d), m\d+, '([^']*)'/.exec(line);
  return m ? { qos: Number(m[1]), retain: m[2] === '1', topic: m[3] } : null;
}

test('mosquitto_sub -t "#" -v receives mosquitto_pub messages at QoS 0, 1 and 2', {
  timeout: T,
}, async (t) => {
  // Readiness without sleeping: mosquitto_sub prints (and flushes) a retained marker only once
  // its subscription is established [MQTT-3.3.1-6]; its debug lines are flushed with it.
  await runOk(t, 'mosquitto_pub', [
    ...mosq(),
    '-i',
    'mq-marker',
    '-t',
    'mq/ready',
    '-m',
    'ready',
    '-q',
    '1',
    '-r',
  ]);
  const sub = run(t, 'mosquitto_sub', [...mosq(), '-i', 'mq-sub', '-t', '#', '-v', '-d', '-q', '2']);
  await sub.out.waitFor((l) => l === 'mq/ready ready', 'the retained marker');

  for (const qos of [0, 1, 2]) {
    const pub = await runOk(t, 'mosquitto_pub', [
      ...mosq(),
      '-d',
      '-i',
      `mq-pub-${qos}`,
      '-t',
      `mq/q${qos}`,
      '-m',
      `hello at qos ${qos}`,
      '-q',
      String(qos),
    ]);
    // The broker completed the publisher's flow: PUBACK for QoS 1, PUBREC/PUBCOMP for QoS 2 [MQTT-4.3.2-2], [MQTT-4.3.3-2].
    if (qos === 1) assert.match(pub.out.text, /received PUBACK \(Mid: 1/);
    if (qos === 2) assert.match(pub.out.text, /received PUBREC \(Mid: 1\)[\s\S]*received PUBCOMP \(Mid: 1/);
    await sub.out.waitFor((l) => l === `mq/q${qos} hello at qos ${qos}`, `message at QoS ${qos}`);
  }
  // Granted QoS 2: each arrives at its published QoS [MQTT-3.8.4-6], with RETAIN 0 as a live
  // message [MQTT-3.3.1-9]; the subscriber's QoS 1 and 2 flows were completed by the broker.
  const publishes = sub.out.lines.map(receivedPublish).filter((p) => p !== null);
  assert.deepEqual(publishes, [
    { qos: 1, retain: true, topic: 'mq/ready' },
    { qos: 0, retain: false, topic: 'mq/q0' },
    { qos: 1, retain: false, topic: 'mq/q1' },
    { qos: 2, retain: false, topic: 'mq/q2' },
  ]);
  await sub.out.waitFor((l) => /sending PUBCOMP/.test(l), 'the QoS 2 flow to complete');
  sub.child.kill('SIGTERM');
  await exited(sub.child);
  await runOk(t, 'mosquitto_pub', [...mosq(), '-i', 'mq-marker', '-t', 'mq/ready', '-n', '-q', '1', '-r']);
});

test('mosquitto_pub -r stores a retained message that a later mosquitto_sub gets with RETAIN 1 [MQTT-3.3.1-5] [MQTT-3.3.1-8]', {
  timeout: T,
}, async (t) => {
  await runOk(t, 'mosquitto_pub', [...mosq(), '-i', 'mr-pub', '-t', 'mr/state', '-m', 'on', '-q', '2', '-r']);
  const sub = await runOk(t, 'mosquitto_sub', [
    ...mosq(),
    '-i',
    'mr-sub',
    '-t',
    'mr/+',
    '-v',
    '-d',
    '-q',
    '1',
    '-C',
    '1',
  ]);
  assert.ok(sub.out.lines.includes('mr/state on'), sub.out.text);
  // Retained QoS 2, granted QoS 1: sent at QoS 1 [MQTT-3.8.4-6], RETAIN 1.
  assert.deepEqual(
    sub.out.lines.map(receivedPublish).filter((p) => p !== null),
    [{ qos: 1, retain: true, topic: 'mr/state' }],
  );
  // An empty retained message (-n) deletes it [MQTT-3.3.1-10]; an mqtt.js client sees the store.
  await runOk(t, 'mosquitto_pub', [...mosq(), '-i', 'mr-pub', '-t', 'mr/state', '-n', '-q', '1', '-r']);
  assert.equal(broker.retained.get('mr/state'), null);
});

test('Paho (Python) and mqtt.js interoperate at QoS 0, 1 and 2 across shards', { timeout: T }, async (t) => {
  const python = pahoPython();
  const paho = (id: string, ...args: string[]): Proc =>
    run(t, python, [PAHO_SCRIPT, '127.0.0.1', String(broker.port), id, ...args]);
  const json = (line: string) => JSON.parse(line) as Record<string, unknown>;

  // Paho publishes, mqtt.js subscribers (granted 2 and 1, on both shards) receive.
  const sub2 = await client(t, broker, { clientId: idOnShard(broker, 0, 'js-sub2') });
  const sub1 = await client(t, broker, { clientId: idOnShard(broker, 1, 'js-sub1') });
  const in2 = new Inbox(sub2);
  const in1 = new Inbox(sub1);
  await subscribe(sub2, 'paho/out/+', 2);
  await subscribe(sub1, 'paho/out/+', 1);
  const messages = [0, 1, 2].map((qos) => ({ topic: `paho/out/q${qos}`, payload: `from paho q${qos}`, qos }));
  const pub = paho(idOnShard(broker, 1, 'paho-pub'), 'pub', JSON.stringify(messages));
  const { code } = await exited(pub.child, 25_000);
  assert.equal(code, 0, `paho pub: ${pub.out.text}\n${pub.err.text}`);
  assert.equal(pub.out.lines.filter((l) => json(l).event === 'published').length, 3, pub.out.text);
  for (const [inbox, granted] of [
    [in2, 2],
    [in1, 1],
  ] as const) {
    for (const m of messages) {
      const got = await waitForMessage(inbox, (r) => r.topic === m.topic);
      // Delivered at min(published, granted) [MQTT-3.8.4-6], RETAIN 0 [MQTT-3.3.1-9].
      assert.deepEqual([got.payload, got.qos, got.retain], [m.payload, Math.min(m.qos, granted), false]);
    }
  }

  // mqtt.js publishes, a Paho subscriber (granted 2) receives, from the other shard.
  const psub = paho(idOnShard(broker, 0, 'paho-sub'), 'sub', 'paho/in/#', '2', '4');
  const subscribed = json(await psub.out.waitFor((l) => l.includes('"subscribed"'), 'paho SUBACK', 20_000));
  assert.deepEqual(subscribed.granted, [2]);
  const jsPub = await client(t, broker, { clientId: idOnShard(broker, 1, 'js-pub') });
  for (const qos of [0, 1, 2] as const)
    await publish(jsPub, `paho/in/q${qos}`, `from mqtt.js q${qos}`, { qos });
  await publish(jsPub, 'paho/in/retained', 'kept', { qos: 1, retain: true });
  const done = await exited(psub.child, 25_000);
  assert.equal(done.code, 0, `paho sub: ${psub.out.text}\n${psub.err.text}`);
  const got = psub.out.lines.map(json).filter((e) => e.event === 'message');
  // Paho hands a QoS 2 message to the application at PUBREL, so only the set is compared.
  assert.deepEqual(
    got.map((e) => [e.topic, e.payload, e.qos, e.retain]).sort(),
    [
      ['paho/in/q0', 'from mqtt.js q0', 0, false],
      ['paho/in/q1', 'from mqtt.js q1', 1, false],
      ['paho/in/q2', 'from mqtt.js q2', 2, false],
      ['paho/in/retained', 'kept', 1, false],
    ],
    'each at its published QoS (granted 2), RETAIN 0 for a live message [MQTT-3.3.1-9]',
  );

  // The retained message mqtt.js stored reaches a new Paho subscriber with RETAIN 1 [MQTT-3.3.1-8].
  const late = paho(idOnShard(broker, 1, 'paho-late'), 'sub', 'paho/in/retained', '1', '1');
  assert.equal((await exited(late.child, 25_000)).code, 0, `paho late: ${late.out.text}\n${late.err.text}`);
  const [retained] = late.out.lines.map(json).filter((e) => e.event === 'message');
  assert.deepEqual([retained.payload, retained.qos, retained.retain], ['kept', 1, true]);
});

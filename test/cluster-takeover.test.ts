/**
 * Cluster II (issue #11): a client id lives on one node at a time. Connecting to another node
 * takes the session over: the old connection gets DISCONNECT 0x8E (MQTT 5), the session
 * (subscriptions, inflight, queue) moves, CONNACK says session present, inflight is resent with
 * DUP; racing connects end with one owner. Real nodes as processes, real clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt, { type IDisconnectPacket, type MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { within } from './helpers/broker.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import { connectTo, Inbox, pollUntil } from './helpers/cluster-clients.js';
import { PacketClient } from './helpers/raw.js';

async function pair(t: Parameters<typeof startNode>[0], prefix: string): Promise<[TestNode, TestNode]> {
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, shards: 2 });
  const n2 = await startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], shards: 2 });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  return [n1, n2];
}

const clientOn = async (n: TestNode, id: string) =>
  (await n.get(`/clients/${encodeURIComponent(id)}`)).status;

/** A persistent MQTT 5 subscriber (clean start 0) connecting to `n`: its inbox and CONNACK. */
async function resume(t: Parameters<typeof startNode>[0], n: TestNode, clientId: string, what: string) {
  const sub = mqtt.connect({
    host: '127.0.0.1',
    port: n.mqttPort,
    clientId,
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
    reconnectPeriod: 0,
  });
  t.after(() => new Promise<void>((r) => sub.end(true, {}, () => r())));
  const inbox = new Inbox(sub);
  const connack = await within(
    new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      sub.once('connect', resolve);
      sub.once('error', reject);
    }),
    what,
  );
  return { inbox, connack };
}

test('takeover across nodes: inflight and queued QoS 1 messages all delivered in order, DUP on the inflight ones, session present, 0x8E to the old connection', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2] = await pair(t, 'tk');
  // The first connection (on n1) receives but never acknowledges: its window fills up and the
  // rest waits in the session queue.
  const { pc: old } = await PacketClient.connect(t, { port: n1.mqttPort } as unknown as Broker, 'tk-sub', {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300, receiveMaximum: 10 },
  });
  old.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'tk/q', qos: 1 }] });
  await old.expect('suback');
  await n2.waitPeer(n1.name, 'running', (r) => r === 1);

  const N = 40;
  const pub = await connectTo(t, n2, 'tk-pub');
  for (let i = 0; i < N; i++) await pub.publishAsync('tk/q', `m${i}`, { qos: 1 });
  await pollUntil(
    async () => old.publishes,
    (n) => n === 10,
    'the old connection’s window to fill',
  );

  const { inbox, connack } = await resume(t, n2, 'tk-sub', 'the client to connect to n2');
  assert.equal(connack.sessionPresent, true, 'session present 1 after a cross-node takeover [MQTT-3.2.2-2]');

  // The old connection on n1 is told why [MQTT-3.1.4-3]: DISCONNECT 0x8E Session taken over.
  let disconnect = null;
  for (let i = 0; i < 11 && !disconnect; i++) {
    const p = await old.next();
    if (p.cmd === 'disconnect') disconnect = p;
  }
  assert.equal(disconnect?.reasonCode, 0x8e);

  const got = await inbox.wait(N, 'every message on the new node');
  assert.deepEqual(
    got.map((g) => g.payload),
    [...Array(N).keys()].map((i) => `m${i}`),
    'in order',
  );
  assert.ok(
    got.slice(0, 10).every((g) => g.dup),
    'the 10 inflight ones resent with DUP [MQTT-4.4.0-1]',
  );
  assert.ok(
    got.slice(10).every((g) => !g.dup),
    'the queued ones sent for the first time',
  );

  // The session (and its route) lives on n2 now.
  assert.equal(await clientOn(n1, 'tk-sub'), 404, 'no session left on n1');
  assert.equal(await clientOn(n2, 'tk-sub'), 200);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);
  const pub1 = await connectTo(t, n1, 'tk-pub1');
  await pub1.publishAsync('tk/q', 'after', { qos: 1 });
  await inbox.wait(N + 1, 'a message published on n1 after the takeover');
  assert.equal(inbox.got[N].payload, 'after');

  // Clean start on n1 discards the session on n2 (everywhere), session present 0.
  const fresh = mqtt.connect({
    host: '127.0.0.1',
    port: n1.mqttPort,
    clientId: 'tk-sub',
    protocolVersion: 5,
    clean: true,
    reconnectPeriod: 0,
  });
  t.after(() => new Promise<void>((r) => fresh.end(true, {}, () => r())));
  const ack2 = await within(
    new Promise<{ sessionPresent: boolean }>((resolve) => fresh.once('connect', resolve)),
    'clean start on n1',
  );
  assert.equal(ack2.sessionPresent, false);
  assert.equal(await clientOn(n2, 'tk-sub'), 404, 'discarded on n2');
});

test('racing connects of one client id to two nodes end with exactly one owner', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2] = await pair(t, 'rc');
  for (let round = 0; round < 5; round++) {
    const id = `rc-client-${round}`;
    const clients: MqttClient[] = [];
    const closed: boolean[] = [false, false];
    const reasons: (number | undefined)[] = [undefined, undefined];
    const connects = [n1, n2].map((n, i) => {
      const c = mqtt.connect({
        host: '127.0.0.1',
        port: n.mqttPort,
        clientId: id,
        protocolVersion: 5,
        clean: false,
        properties: { sessionExpiryInterval: 60 },
        reconnectPeriod: 0,
      });
      clients.push(c);
      t.after(() => new Promise<void>((r) => c.end(true, {}, () => r())));
      c.on('disconnect', (p: IDisconnectPacket) => {
        reasons[i] = p.reasonCode;
      });
      c.on('close', () => {
        closed[i] = true;
      });
      return new Promise<void>((resolve) => {
        c.once('connect', () => resolve());
        c.once('close', () => resolve());
      });
    });
    await within(Promise.all(connects), `round ${round}: both connects answered`);
    // The lock node serialises the two claims: the second takes the session from the first.
    await pollUntil(
      async () => closed.filter(Boolean).length,
      (n) => n >= 1,
      `round ${round}: one connection closed`,
    );
    const loser = closed.indexOf(true);
    const winner = 1 - loser;
    assert.equal(reasons[loser], 0x8e, `round ${round}: the loser is told Session taken over`);
    assert.equal(closed[winner], false, `round ${round}: the winner stays connected`);
    assert.equal(clients[winner].connected, true);
    const nodes = [n1, n2];
    const owner = await nodes[winner].get(`/clients/${id}`);
    assert.equal(owner.status, 200);
    assert.equal((owner.body as { connected: boolean }).connected, true);
    assert.equal(await clientOn(nodes[loser], id), 404, `round ${round}: no session on the loser's node`);
  }
});

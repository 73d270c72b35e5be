/**
 * Cluster II (issue #11): a client id lives on one node at a time. Connecting to another node
 * takes the session over: the old connection gets DISCONNECT 0x8E (MQTT 5), the session
 * (subscriptions, inflight, queue) moves, CONNACK says session present, inflight is resent with
 * DUP; racing connects end with one owner. Real nodes as processes, real clients.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import mqtt, { type IDisconnectPacket, type MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { within } from './helpers/broker.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import { connectTo, Inbox, pollUntil } from './helpers/cluster-clients.js';
import { PacketClient } from './helpers/raw.js';

async function pair(
  t: Parameters<typeof startNode>[0],
  prefix: string,
  args: string[] = [],
): Promise<[TestNode, TestNode]> {
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, shards: 2, args });
  const n2 = await startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], shards: 2, args });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  return [n1, n2];
}

const clientOn = async (n: TestNode, id: string) =>
  (await n.get(`/clients/${encodeURIComponent(id)}`)).status;

/** `prefix`0…`prefix`n-1 in order; the first `inflight` resent with DUP, the rest sent for the first time. */
function inOrderDupFirst(
  got: { payload: string; dup: boolean }[],
  prefix: string,
  n: number,
  inflight: number,
) {
  assert.deepEqual(
    got.map((g) => g.payload),
    [...Array(n).keys()].map((i) => `${prefix}${i}`),
    'all of them, in order',
  );
  assert.ok(
    got.slice(0, inflight).every((g) => g.dup),
    `the ${inflight} inflight ones resent with DUP [MQTT-4.4.0-1]`,
  );
  assert.ok(
    got.slice(inflight).every((g) => !g.dup),
    'the queued ones sent for the first time',
  );
}

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

  inOrderDupFirst(await inbox.wait(N, 'every message on the new node'), 'm', N, 10);

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

test('a session shipped by a takeover is in the new node’s durable store at once: kill -9 of that node, restart, reconnect → session present, the shipped inflight and queued QoS 1 messages there', {
  timeout: 120_000,
}, async (t) => {
  // Durable nodes (cluster tests run memory-only otherwise).
  const durable = ['--durability.mode=sync'];
  const [n1, n2] = await pair(t, 'dt', durable);
  const id = 'dt-sub';
  const c1 = await connectTo(t, n1, id, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await c1.subscribeAsync('dt/q', { qos: 1 });
  await new Promise<void>((r) => c1.end(false, {}, () => r()));
  await n2.waitPeer(n1.name, 'running', (r) => r === 1);
  // Queued in the offline session on n1.
  const N = 6;
  const pub = await connectTo(t, n2, 'dt-pub');
  for (let i = 0; i < N; i++) await pub.publishAsync('dt/q', `d${i}`, { qos: 1 });
  await pub.endAsync();

  // Taken over to n2 by a client that takes 2 messages (receive maximum) and acks none: 2
  // inflight, 4 queued. Nothing in the session changes after the import.
  const { pc, connack } = await PacketClient.connect(t, { port: n2.mqttPort } as unknown as Broker, id, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300, receiveMaximum: 2 },
  });
  assert.equal(connack.sessionPresent, true, 'taken over from n1 [MQTT-3.2.2-2]');
  await pollUntil(
    async () => pc.publishes,
    (n) => n === 2,
    'the 2 inflight ones on n2',
  );
  assert.equal(await clientOn(n1, id), 404, 'gone from n1');

  // n2 crashes and comes back on its data dir: the session is restored from its store.
  const dataDir = n2.dataDir;
  await n2.kill9();
  const n2b = await startNode(t, {
    name: n2.name,
    seeds: [n1.clusterPort],
    shards: 2,
    dataDir,
    args: durable,
  });
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  await n2b.waitPeer(n1.name, 'running');
  const { inbox, connack: ack } = await resume(t, n2b, id, 'the client to reconnect to the restarted n2');
  assert.equal(ack.sessionPresent, true, 'the imported session survived the crash');
  inOrderDupFirst(await inbox.wait(N, 'the shipped messages after the restart'), 'd', N, 2);
});

/**
 * Cluster II (issue #11): the parts of a session that a cross-node takeover ships besides its
 * subscriptions and QoS 1 queue (test/cluster-takeover.test.ts has those): QoS 2 state in both
 * directions, and the will of the connection it takes over. Real nodes as processes, a raw MQTT
 * 5 client (mqtt-packet) for the QoS 2 flows, mqtt.js for the rest.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { IClientOptions } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { Registry } from '../src/cluster/registry.js';
import { within } from './helpers/broker.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import {
  connectTo,
  Inbox,
  pollUntil,
  resumeInbox,
  subscribeTo,
  threeNodes,
} from './helpers/cluster-clients.js';
import { PacketClient } from './helpers/raw.js';

type Ctx = Parameters<typeof startNode>[0];

async function pair(t: Ctx, prefix: string): Promise<[TestNode, TestNode]> {
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, shards: 2 });
  const n2 = await startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], shards: 2 });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  return [n1, n2];
}

/** PacketClient speaks to a broker by its port: a node's MQTT listener. */
const at = (n: TestNode) => ({ port: n.mqttPort }) as unknown as Broker;

const persistent = { protocolVersion: 5 as const, clean: false, properties: { sessionExpiryInterval: 300 } };

test('takeover across nodes ships QoS 2 state: the unreleased outbound message is resent with DUP and its id, the inbound id awaiting PUBREL is still known (no second delivery)', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2] = await pair(t, 'tq');
  const watch = new Inbox(await connectTo(t, n2, 'tq-watch', { protocolVersion: 5 }));
  await subscribeTo(watch.c, 'tq/in', 2);
  const { pc: r } = await PacketClient.connect(t, at(n1), 'tq-c', persistent);
  await r.subscribe('tq/out', 2);
  // Both nodes see each other's routes: n2's watcher on n1, the client's filter on n2.
  await n1.waitPeer(n2.name, 'running', (routes) => routes >= 1);
  await n2.waitPeer(n1.name, 'running', (routes) => routes >= 1);

  // Outbound QoS 2 delivered and never acknowledged (no PUBREC): inflight in the session.
  const pub = await connectTo(t, n2, 'tq-pub', { protocolVersion: 5 });
  await pub.publishAsync('tq/out', 'o1', { qos: 2 });
  const out = await r.expect('publish');
  assert.equal(out.qos, 2);
  // Inbound QoS 2 received (PUBREC) and not released: its id awaits PUBREL in the session.
  r.send({
    cmd: 'publish',
    topic: 'tq/in',
    payload: Buffer.from('a'),
    qos: 2,
    messageId: 7,
    retain: false,
    dup: false,
  });
  assert.equal((await r.expect('pubrec')).messageId, 7);
  await watch.until((g) => g.some((x) => x.payload === 'a'), 'the inbound QoS 2 message delivered');

  // The client connects to n2: n1 ships the session.
  const { pc: r2, connack } = await PacketClient.connect(t, at(n2), 'tq-c', persistent);
  assert.equal(connack.sessionPresent, true, 'session present 1 [MQTT-3.2.2-2]');
  const again = await r2.expect('publish');
  assert.equal(String(again.payload), 'o1');
  assert.equal(again.dup, true, 'the unacknowledged QoS 2 PUBLISH is resent with DUP [MQTT-4.4.0-1]');
  assert.equal(again.messageId, out.messageId, 'with its packet id [MQTT-4.4.0-1]');
  // And its flow completes on n2: PUBREC → PUBREL → PUBCOMP [MQTT-4.3.3-1].
  r2.send({ cmd: 'pubrec', messageId: again.messageId });
  assert.equal((await r2.expect('pubrel')).messageId, again.messageId);
  r2.send({ cmd: 'pubcomp', messageId: again.messageId });

  // The client resends its inbound PUBLISH (DUP): acknowledged, not delivered again [MQTT-4.3.3-2].
  r2.send({
    cmd: 'publish',
    topic: 'tq/in',
    payload: Buffer.from('a'),
    qos: 2,
    messageId: 7,
    retain: false,
    dup: true,
  });
  assert.equal((await r2.expect('pubrec')).messageId, 7);
  r2.send({ cmd: 'pubrel', messageId: 7 });
  const comp = await r2.expect('pubcomp');
  assert.equal(comp.reasonCode ?? 0, 0, 'PUBREL found the shipped id awaiting release (not 0x92)');

  // A marker after it, from n1: once it is in, anything the resend caused is in too.
  const marker = await connectTo(t, n1, 'tq-mark', { protocolVersion: 5 });
  await marker.publishAsync('tq/in', 'marker', { qos: 1 });
  await watch.until((g) => g.some((x) => x.payload === 'marker'), 'the marker');
  assert.deepEqual(
    watch.got.map((g) => g.payload),
    ['a', 'marker'],
    'the QoS 2 message delivered exactly once [MQTT-4.3.3-2]',
  );
  assert.deepEqual(await r2.ping(), [], 'nothing else resent');
});

/** An MQTT 5 client with a will on `topic` after `delay` s, connected to `n` with a persistent session. */
async function withWill(t: Ctx, n: TestNode, id: string, topic: string, delay: number) {
  const opts: IClientOptions = {
    ...persistent,
    will: {
      topic,
      payload: Buffer.from(`will of ${id}`),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: delay },
    },
  };
  const c = await connectTo(t, n, id, opts);
  const closed = new Promise<number | undefined>((resolve) =>
    c.once('disconnect', (p) => resolve(p.reasonCode)),
  );
  return { c, closed };
}

test('takeover across nodes and the will of the connection it closes: published once with no delay [MQTT-3.1.2-8]; with a delay, not at all, since the session resumed on the other node [MQTT-3.1.3-9]', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2] = await pair(t, 'tw');
  // Watchers of the will topics on both nodes: a will published anywhere reaches both.
  const w1 = new Inbox(await connectTo(t, n1, 'tw-w1', { protocolVersion: 5 }));
  const w2 = new Inbox(await connectTo(t, n2, 'tw-w2', { protocolVersion: 5 }));
  await subscribeTo(w1.c, 'tw/#', 1);
  await subscribeTo(w2.c, 'tw/#', 1);
  await n1.waitPeer(n2.name, 'running', (routes) => routes >= 1);
  await n2.waitPeer(n1.name, 'running', (routes) => routes >= 1);

  const now = await withWill(t, n1, 'tw-now', 'tw/now', 0);
  const later = await withWill(t, n1, 'tw-later', 'tw/later', 2);
  const takenAt = Date.now();
  for (const id of ['tw-now', 'tw-later']) {
    const { connack } = await resumeInbox(t, n2, id, persistent);
    assert.equal(connack.sessionPresent, true, `${id}: session present 1 [MQTT-3.2.2-2]`);
  }
  assert.equal(await within(now.closed, 'DISCONNECT to tw-now'), 0x8e, 'session taken over [MQTT-3.1.4-3]');
  assert.equal(
    await within(later.closed, 'DISCONNECT to tw-later'),
    0x8e,
    'session taken over [MQTT-3.1.4-3]',
  );

  await w2.until((g) => g.some((x) => x.topic === 'tw/now'), 'the undelayed will');
  // Past the delayed will's due time (2 s, swept once a second) and then a marker through both
  // watchers: a will published by either node by then has reached them.
  const due = takenAt + 2000 + 2500;
  while (Date.now() < due) await new Promise((r) => setTimeout(r, due - Date.now()));
  const marker = await connectTo(t, n1, 'tw-mark', { protocolVersion: 5 });
  await marker.publishAsync('tw/marker', 'm', { qos: 1 });
  await w1.until((g) => g.some((x) => x.topic === 'tw/marker'), 'the marker on n1');
  await w2.until((g) => g.some((x) => x.topic === 'tw/marker'), 'the marker on n2');
  for (const [name, w] of [['n1', w1] as const, ['n2', w2] as const]) {
    const wills = w.got.filter((x) => x.topic !== 'tw/marker').map((x) => x.topic);
    assert.deepEqual(wills, ['tw/now'], `${name}'s watcher: the undelayed will once, the delayed one never`);
  }
});

test('clean start discards the session everywhere, also when its lock node restarted and no longer knows the owner (every node is asked) [MQTT-3.1.2-4]', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2, n3] = await threeNodes(t, 'tc', [1, 1, 1]);
  // A client id whose lock node is n3 in the full view.
  const names = [n1.name, n2.name, n3.name];
  let id = 'tc-c0';
  for (let i = 1; Registry.lockNode(id, names) !== n3.name; i++) id = `tc-c${i}`;
  // Its persistent session on n1, left offline with a subscription.
  const first = await connectTo(t, n1, id, persistent);
  await subscribeTo(first, 'tc/x', 1);
  await new Promise<void>((r) => first.end(false, {}, () => r()));
  assert.equal((await n1.get(`/clients/${encodeURIComponent(id)}`)).status, 200, 'offline session on n1');

  // n3 restarts (kill -9, same name and port): it no longer knows who owns the id.
  await n3.kill9();
  await Promise.all([n1.waitPeer(n3.name, 'stopped'), n2.waitPeer(n3.name, 'stopped')]);
  const n3b = await startNode(t, { name: n3.name, seeds: [n1.clusterPort], clusterPort: n3.clusterPort });
  await Promise.all([
    n1.waitPeer(n3b.name, 'running'),
    n2.waitPeer(n3b.name, 'running'),
    n3b.waitPeer(n1.name, 'running'),
    n3b.waitPeer(n2.name, 'running'),
  ]);

  // Clean start on n2: the lock node asks every node, n1 discards its copy.
  const fresh = await connectTo(t, n2, id, { protocolVersion: 5, clean: true });
  await new Promise<void>((r) => fresh.end(false, {}, () => r()));
  await pollUntil(
    async () => (await n1.get(`/clients/${encodeURIComponent(id)}`)).status,
    (s) => s === 404,
    'n1 to discard the session',
  );
  // A later clean start 0 anywhere finds no session [MQTT-3.2.2-3] (session present 0).
  const { connack } = await resumeInbox(t, n1, id, persistent);
  assert.equal(connack.sessionPresent, false, 'the discarded session is not resumed');
});

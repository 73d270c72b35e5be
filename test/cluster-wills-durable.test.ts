/**
 * Cluster II (issue #11) with durability on (the default; cluster test nodes run memory-only
 * unless told): the wills of the clients of a node killed with -9 are published by the cluster,
 * once — the node restarted on its data dir restores those sessions with their wills pending
 * and must not publish them again. A node whose peers never knew its previous incarnation
 * still publishes its restored wills itself [MQTT-3.1.2-8]. Real node processes on loopback,
 * real MQTT clients, real kill -9.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { startNode, type TestNode } from './helpers/cluster.js';
import {
  connectInbox,
  connectTo,
  Inbox,
  pollUntil,
  subscribeTo,
  threeNodes,
} from './helpers/cluster-clients.js';

const DURABLE = ['--durability.mode=sync'];
type Ctx = Parameters<typeof connectTo>[0];

const metric = async (n: TestNode, name: string) => (await n.scrape()).values.get(name) ?? 0;
const count = (got: { topic: string }[], topic: string) => got.filter((g) => g.topic === topic).length;

/**
 * Its session record is committed: in sync mode a QoS 1 PUBLISH to a persistent subscriber is
 * acked once its turn is committed, and one shard commits in order (the CONNECT's record first).
 */
async function committed(c: MqttClient, topic: string): Promise<void> {
  await subscribeTo(c, topic, 1);
  await c.publishAsync(topic, 'x', { qos: 1 });
}

/**
 * The restarted node's word on its restored wills (logged by every shard holding some), or,
 * without it (a broker that does not hold them), long enough for its sweeps to have published
 * them: then a will published by its sweep after that (a client dropped without DISCONNECT,
 * 1 s Will Delay Interval) — what that sweep or an earlier one published arrives before it.
 */
async function afterRestoredWills(t: Ctx, n: TestNode, id: string, sub: Inbox): Promise<void> {
  await n.out
    .waitFor((l) => l.includes('"msg":"restored wills:'), `${n.name}: restored wills`, 20_000)
    .catch(() => {});
  const x = await connectTo(t, n, id, {
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 30 },
    will: {
      topic: `will/${id}`,
      payload: Buffer.from('marker'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 1 },
    },
  });
  x.on('error', () => {});
  x.stream.destroy();
  await sub.until((g) => g.some((m) => m.topic === `will/${id}`), `${id}'s will (marker)`, 20_000);
}

test('durable cluster: the wills of a node killed with -9 come once, not again when it restarts on its data dir', {
  timeout: 180_000,
}, async (t) => {
  const [n1, n2, n3] = await threeNodes(t, 'wd', [1, 1, 1], { args: DURABLE });
  const s1 = new Inbox(await connectTo(t, n1, 'wd-sub1'));
  await subscribeTo(s1.c, 'will/#', 1);
  await n3.waitPeer(n1.name, 'running', (r) => r >= 1);

  // Persistent sessions on n3: an MQTT 3.1.1 will, and an MQTT 5 will with a 1 s Will Delay
  // Interval [MQTT-3.1.3-9].
  const a = await connectTo(t, n3, 'wd-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  const b = await connectTo(t, n3, 'wd-b', {
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 60 },
    will: {
      topic: 'will/b',
      payload: Buffer.from('b gone'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 1 },
    },
  });
  for (const c of [a, b]) c.on('error', () => {});
  await committed(a, 'wd/a');
  await committed(b, 'wd/b');
  for (const n of [n1, n2])
    await pollUntil(
      () => metric(n, 'emqx_ts_cluster_wills_received_total'),
      (v) => v >= 2,
      `${n.name} to hold the wills`,
    );

  const dataDir = n3.dataDir;
  await n3.kill9();
  // The survivors publish them (the connections ended without DISCONNECT [MQTT-3.1.2-8]).
  await s1.until((g) => count(g, 'will/a') >= 1 && count(g, 'will/b') >= 1, 'wills from the cluster', 30_000);
  await Promise.all([n1.waitPeer(n3.name, 'stopped'), n2.waitPeer(n3.name, 'stopped')]);

  // n3 again on its data dir: both sessions are back with their wills pending, which it must
  // not publish a second time.
  const n3b = await startNode(t, { name: n3.name, seeds: [n1.clusterPort], dataDir, args: DURABLE });
  await n1.waitPeer(n3b.name, 'running');
  await afterRestoredWills(t, n3b, 'wd-x', s1);
  const topics = s1.got.map((g) => g.topic);
  assert.equal(count(s1.got, 'will/a'), 1, `will/a once: ${JSON.stringify(topics)}`);
  assert.equal(count(s1.got, 'will/b'), 1, `will/b once: ${JSON.stringify(topics)}`);
  assert.equal(
    await metric(n3b, 'emqx_ts_wills_restored_dropped_total'),
    2,
    'n3b dropped both restored wills',
  );

  // The sessions themselves are back on n3b (only their wills were the cluster's).
  const present = await new Promise<boolean>((resolve, reject) => {
    const c = mqtt.connect({
      host: '127.0.0.1',
      port: n3b.mqttPort,
      clientId: 'wd-a',
      clean: false,
      reconnectPeriod: 0,
    });
    t.after(() => new Promise<void>((r) => c.end(true, {}, () => r())));
    c.once('connect', (ack) => resolve(ack.sessionPresent));
    c.once('error', reject);
  });
  assert.equal(present, true, 'wd-a resumes its restored session on n3b');
});

test('durable node with cluster discovery but no peer that knew it: its restored will is published after kill -9 + restart, once', {
  timeout: 120_000,
}, async (t) => {
  const name = 'wa1@127.0.0.1';
  const n = await startNode(t, { name, args: DURABLE });
  const sub = await connectInbox(t, n, 'wa-sub', { clean: false });
  await subscribeTo(sub.c, 'will/#', 1);
  const a = await connectTo(t, n, 'wa-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  a.on('error', () => {});
  sub.c.on('error', () => {});
  await committed(a, 'wa/a');
  await committed(sub.c, 'wa/sub');

  await n.kill9();
  const nb = await startNode(t, { name, dataDir: n.dataDir, args: DURABLE });
  // The subscriber's persistent session is back too: the will reaches it, queued or live.
  const sub2 = await connectInbox(t, nb, 'wa-sub', { clean: false });
  await sub2.until((g) => count(g, 'will/a') >= 1, 'the restored will from the restarted node', 30_000);
  await afterRestoredWills(t, nb, 'wa-x', sub2);
  assert.equal(count(sub2.got, 'will/a'), 1, `will/a once: ${JSON.stringify(sub2.got.map((g) => g.topic))}`);
  assert.equal(
    await metric(nb, 'emqx_ts_wills_restored_dropped_total'),
    0,
    'nothing dropped: no peer published it',
  );
});

test('durable cluster restarted as a whole (both nodes killed with -9): the restarted node publishes its restored will, once; its peer answers that it published none', {
  timeout: 120_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'wr1@127.0.0.1', args: DURABLE });
  const n2 = await startNode(t, { name: 'wr2@127.0.0.1', seeds: [n1.clusterPort], args: DURABLE });
  await n1.waitPeer(n2.name, 'running');
  const sub = await connectInbox(t, n2, 'wr-sub', { clean: false });
  sub.c.on('error', () => {});
  await subscribeTo(sub.c, 'will/#', 1);
  const a = await connectTo(t, n2, 'wr-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  a.on('error', () => {});
  await committed(a, 'wr/a');
  await committed(sub.c, 'wr/sub');
  await pollUntil(
    () => metric(n1, 'emqx_ts_cluster_wills_received_total'),
    (v) => v >= 1,
    `${n1.name} to hold the will`,
  );

  // Both at once: n1 dies long before it could see n2 down (down_after 2 s).
  await Promise.all([n1.kill9(), n2.kill9()]);
  const n1b = await startNode(t, { name: n1.name, dataDir: n1.dataDir, args: DURABLE });
  const n2b = await startNode(t, {
    name: n2.name,
    seeds: [n1b.clusterPort],
    dataDir: n2.dataDir,
    args: DURABLE,
  });
  // n1b answered n2b's first join round (it knew no previous incarnation of n2: nothing fired).
  const round = await n2b.out.waitFor((l) => l.includes('"msg":"first join round over'), 'first join round');
  const lines = n2b.out.lines;
  const joined = lines.findIndex((l) => l.includes('"msg":"joined cluster peer"'));
  assert.ok(joined >= 0 && joined < lines.indexOf(round), 'n2b joined n1b in its first join round');
  assert.match(round, /"fired":0/);
  const sub2 = await connectInbox(t, n2b, 'wr-sub', { clean: false });
  await sub2.until((g) => count(g, 'will/a') >= 1, 'the restored will from the restarted node', 30_000);
  await afterRestoredWills(t, n2b, 'wr-x', sub2);
  assert.equal(count(sub2.got, 'will/a'), 1, `will/a once: ${JSON.stringify(sub2.got.map((g) => g.topic))}`);
  assert.equal(await metric(n2b, 'emqx_ts_wills_restored_dropped_total'), 0, 'nothing dropped');
  assert.equal(await metric(n1b, 'emqx_ts_cluster_wills_published_total'), 0, 'n1b published none of it');
});

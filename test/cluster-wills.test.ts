/**
 * Cluster II (issue #11): the wills of the clients of a node that dies (kill -9) are published
 * by the cluster, once. Real nodes as processes on loopback, real MQTT clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { untilPast } from './helpers/base.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import {
  connectTo,
  Inbox,
  pollUntil,
  subscribeTo,
  threeNodes,
  willClient,
} from './helpers/cluster-clients.js';

const metric = async (n: TestNode, name: string) => (await n.scrape()).values.get(name) ?? 0;

test('wills of the clients of a node killed with -9 are published once by the surviving nodes', {
  timeout: 120_000,
}, async (t) => {
  const [n1, n2, n3] = await threeNodes(t, 'wl', [1, 1, 2]);
  const s1 = new Inbox(await connectTo(t, n1, 'wl-sub1'));
  const s2 = new Inbox(await connectTo(t, n2, 'wl-sub2', { protocolVersion: 5 }));
  // When each will arrived: both are due when n3 is marked down, v5's 1 s later.
  const arrived = new Map<string, number>();
  s2.c.on('message', (topic) => {
    if (!arrived.has(topic)) arrived.set(topic, Date.now());
  });
  await subscribeTo(s1.c, 'will/#', 1);
  await subscribeTo(s2.c, 'will/#', 1);
  await Promise.all([
    n1.waitPeer(n2.name, 'running', (r) => r >= 1),
    n2.waitPeer(n1.name, 'running', (r) => r >= 1),
  ]);

  // Two clients on n3: an MQTT 3.1.1 will, and an MQTT 5 one with a 1 s Will Delay Interval
  // (session expiry 30 s) and a user property.
  await connectTo(t, n3, 'wl-v4', {
    will: { topic: 'will/v4', payload: Buffer.from('v4 gone'), qos: 1, retain: false },
  });
  await connectTo(t, n3, 'wl-v5', {
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 30 },
    will: {
      topic: 'will/v5',
      payload: Buffer.from('v5 gone'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 1, userProperties: { why: 'node died' } },
    },
  });
  // Both survivors hold both wills before the kill.
  for (const n of [n1, n2])
    await pollUntil(
      () => metric(n, 'emqx_ts_cluster_wills_received_total'),
      (v) => v >= 2,
      `${n.name} to hold the wills`,
    );

  await n3.kill9();
  const done = (g: { topic: string }[]) =>
    g.some((x) => x.topic === 'will/v4') && g.some((x) => x.topic === 'will/v5');
  await Promise.all([s1.until(done, 'wills on n1', 30_000), s2.until(done, 'wills on n2', 30_000)]);
  const v5 = s2.got.find((g) => g.topic === 'will/v5')!;
  assert.equal(v5.payload, 'v5 gone');
  assert.deepEqual({ ...v5.props?.userProperties }, { why: 'node died' }, 'will properties kept');
  const waited = arrived.get('will/v5')! - arrived.get('will/v4')!;
  assert.ok(
    waited >= 900,
    `the delayed will waited for its Will Delay Interval [MQTT-3.1.3-9]: ${waited} ms after the other`,
  );

  // Once: both survivors have marked n3 down (they decide then); a marker published after
  // that arrives after any second copy would have.
  await Promise.all([n1.waitPeer(n3.name, 'stopped'), n2.waitPeer(n3.name, 'stopped')]);
  const pub = await connectTo(t, n2, 'wl-marker');
  await pub.publishAsync('will/marker', 'm', { qos: 1 });
  await Promise.all([
    s1.until((g) => g.some((x) => x.topic === 'will/marker'), 'marker on n1'),
    s2.until((g) => g.some((x) => x.topic === 'will/marker'), 'marker on n2'),
  ]);
  for (const s of [s1, s2]) {
    assert.deepEqual(
      s.got.map((g) => g.topic).sort(),
      ['will/marker', 'will/v4', 'will/v5'],
      'each will once',
    );
  }
  const published =
    (await metric(n1, 'emqx_ts_cluster_wills_published_total')) +
    (await metric(n2, 'emqx_ts_cluster_wills_published_total'));
  assert.equal(published, 2, 'one survivor published the two wills');
});

test('a will waiting for its delay on a node killed with -9: the survivor publishes it when the session ends, if that comes first, counted from the connection loss [MQTT-3.1.3-9]', {
  timeout: 120_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'wp1@127.0.0.1' });
  const n2 = await startNode(t, { name: 'wp2@127.0.0.1', seeds: [n1.clusterPort] });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  const sub = new Inbox(await connectTo(t, n1, 'wp-sub', { protocolVersion: 5 }));
  await subscribeTo(sub.c, 'will/#', 1);
  let arrived = 0;
  sub.c.on('message', (topic) => {
    if (topic === 'will/pending' && arrived === 0) arrived = Date.now();
  });

  // On n2: Will Delay Interval 60 s, Session Expiry Interval 10 s. The connection drops
  // without DISCONNECT: the will is due when the session ends, 10 s later.
  const EXPIRY = 10;
  const c = await willClient(t, n2, 'wp-pending', 'will/pending', 60, EXPIRY);
  await pollUntil(
    () => metric(n1, 'emqx_ts_cluster_wills_received_total'),
    (v) => v >= 1,
    "n1 to hold the connection's will",
  );
  const closedAt = Date.now();
  c.stream.destroy();
  // n2 sends the will again once it waits for its delay (the connection has ended).
  await pollUntil(
    () => metric(n1, 'emqx_ts_cluster_wills_received_total'),
    (v) => v >= 2,
    'n1 to hold the pending will',
  );
  // n2 dies 3 s into the 10 s: the survivor must not start the count again at the death.
  await untilPast(closedAt + 3000, '3 s after the connection loss');
  await n2.kill9();
  await n1.waitPeer(n2.name, 'stopped');
  const downSeen = Date.now();
  await sub.until((g) => g.some((m) => m.topic === 'will/pending'), 'the pending will', 40_000);
  const after = arrived - closedAt;
  assert.ok(
    after >= EXPIRY * 1000 - 100,
    `not before the session ends: ${after} ms after the connection loss`,
  );
  const due = Math.max(closedAt + EXPIRY * 1000, downSeen);
  assert.ok(
    arrived <= due + 2500,
    `at the session's end (or when n2 was seen down, if later): ${arrived - due} ms after ` +
      `(${after} ms after the connection loss, n2 seen down after ${downSeen - closedAt} ms)`,
  );
});

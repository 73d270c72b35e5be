/**
 * Cluster II (issue #11): the wills of the clients of a node that dies (kill -9) are published
 * by the cluster, once. Real nodes as processes on loopback, real MQTT clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { TestNode } from './helpers/cluster.js';
import { connectTo, Inbox, pollUntil, subscribeTo, threeNodes } from './helpers/cluster-clients.js';

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

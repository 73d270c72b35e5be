/**
 * Cluster II (issue #11): the retained store on every node. Real nodes as processes on
 * loopback, real MQTT clients; waits are on arrivals and REST state, never fixed sleeps.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startNode } from './helpers/cluster.js';
import { connectTo, Inbox, pollUntil, retainedCount, subscribeTo } from './helpers/cluster-clients.js';

test('a retained message published on node 1 reaches a later subscriber on node 2; an empty payload deletes it everywhere; a late joiner receives the set', {
  timeout: 120_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'rt1@127.0.0.1' });
  const n2 = await startNode(t, { name: 'rt2@127.0.0.1', seeds: [n1.clusterPort], shards: 2 });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);

  const p1 = await connectTo(t, n1, 'rt-pub1', { protocolVersion: 5 });
  // Acked only once n2 has it too: no waiting needed before subscribing there.
  await p1.publishAsync('rt/a', 'A', {
    qos: 1,
    retain: true,
    properties: { userProperties: { k: 'v' } },
  });
  await p1.publishAsync('rt/b', 'B', { qos: 1, retain: true });

  // A retained message is sent with RETAIN 1 to a new subscription [MQTT-3.3.1-6].
  const s2 = new Inbox(await connectTo(t, n2, 'rt-sub2', { protocolVersion: 5 }));
  await subscribeTo(s2.c, 'rt/#', 1);
  const got = await s2.wait(2, 'retained messages on node 2');
  const byTopic = new Map(got.map((g) => [g.topic, g]));
  assert.equal(byTopic.get('rt/a')?.payload, 'A');
  assert.equal(byTopic.get('rt/a')?.retain, true);
  assert.deepEqual({ ...byTopic.get('rt/a')?.props?.userProperties }, { k: 'v' }, 'properties replicated');
  assert.equal(byTopic.get('rt/b')?.payload, 'B');
  assert.equal(await retainedCount(n2), 2, 'the live forward to s2 was not stored a second time');

  // Deleted on node 2 (empty payload [MQTT-3.3.1-10]): gone on node 1 once acked.
  const p2 = await connectTo(t, n2, 'rt-pub2');
  await p2.publishAsync('rt/a', '', { qos: 1, retain: true });
  const s1 = new Inbox(await connectTo(t, n1, 'rt-sub1'));
  await subscribeTo(s1.c, 'rt/#', 1);
  await s1.wait(1, 'rt/b on node 1');
  assert.deepEqual(
    s1.got.map((g) => g.topic),
    ['rt/b'],
    'rt/a deleted on node 1 too',
  );
  assert.equal(await retainedCount(n1), 1);

  // A replaced message: the newest wins on both nodes.
  await p2.publishAsync('rt/b', 'B2', { qos: 1, retain: true });
  const s1b = new Inbox(await connectTo(t, n1, 'rt-sub1b'));
  await subscribeTo(s1b.c, 'rt/b', 0);
  assert.equal((await s1b.wait(1, 'replaced rt/b'))[0].payload, 'B2');

  // A node that joins later gets the whole set (and not the deleted one).
  const n3 = await startNode(t, { name: 'rt3@127.0.0.1', seeds: [n2.clusterPort] });
  await n3.waitPeer(n1.name, 'running');
  await pollUntil(
    () => retainedCount(n3),
    (n) => n === 1,
    'the late joiner to hold the retained set',
  );
  const s3 = new Inbox(await connectTo(t, n3, 'rt-sub3'));
  await subscribeTo(s3.c, 'rt/#', 1);
  const g3 = await s3.wait(1, 'retained on the late joiner');
  assert.deepEqual(
    g3.map((g) => [g.topic, g.payload, g.retain]),
    [['rt/b', 'B2', true]],
  );

  // The late joiner's own retained message reaches the others.
  const p3 = await connectTo(t, n3, 'rt-pub3');
  await p3.publishAsync('rt/c', 'C', { qos: 1, retain: true });
  assert.equal(await retainedCount(n1), 2);
  assert.equal(await retainedCount(n2), 2);
});

/**
 * Cluster II (issue #11), two-phase hand-over: the old node keeps a session it shipped until the
 * new node says it stored it; a new node that dies first (here: as it receives the session, a
 * test switch, EMQX_TS_TEST_DIE_ON_IMPORT — a kill -9 between the export and its commit) gives
 * the session back to the old node once it is marked down. The client reconnecting there finds
 * it: session present 1 [MQTT-3.2.2-2], its queued QoS 1 messages delivered in order.
 * Real nodes as processes, real clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt from 'mqtt';
import { within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';
import { connectTo, Inbox, subscribeTo } from './helpers/cluster-clients.js';

test('a session shipped to a node that dies before storing it is restored on the old node', {
  timeout: 120_000,
}, async (t) => {
  const a = await startNode(t, { name: 'ho1@127.0.0.1', downAfter: 2, shards: 2 });
  const b = await startNode(t, {
    name: 'ho2@127.0.0.1',
    seeds: [a.clusterPort],
    downAfter: 2,
    env: { EMQX_TS_TEST_DIE_ON_IMPORT: '1' },
  });
  await Promise.all([a.waitPeer(b.name, 'running'), b.waitPeer(a.name, 'running')]);
  const opts = {
    protocolVersion: 5 as const,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  };
  const first = await connectTo(t, a, 'ho-sub', opts);
  await subscribeTo(first, 'ho/q', 1);
  await new Promise<void>((r) => first.end(false, {}, () => r()));
  const pub = await connectTo(t, a, 'ho-pub');
  for (let i = 0; i < 5; i++) await pub.publishAsync('ho/q', `m${i}`, { qos: 1 });

  // The client moves to b, which dies with the session in transit.
  const doomed = mqtt.connect({
    host: '127.0.0.1',
    port: b.mqttPort,
    clientId: 'ho-sub',
    reconnectPeriod: 0,
    ...opts,
  });
  doomed.on('error', () => {});
  t.after(() => void doomed.end(true));
  await within(b.exited, 'b to die on import');
  await a.waitPeer(b.name, 'stopped');

  const again = mqtt.connect({
    host: '127.0.0.1',
    port: a.mqttPort,
    clientId: 'ho-sub',
    reconnectPeriod: 0,
    ...opts,
  });
  t.after(() => new Promise<void>((r) => again.end(true, {}, () => r())));
  const inbox = new Inbox(again);
  const connack = await within(
    new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      again.once('connect', resolve);
      again.once('error', reject);
    }),
    'the client back on a',
  );
  assert.equal(connack.sessionPresent, true, 'session present 1 on a [MQTT-3.2.2-2]');
  const got = await inbox.wait(5, 'the queued messages on a');
  assert.deepEqual(
    got.map((g) => g.payload),
    ['m0', 'm1', 'm2', 'm3', 'm4'],
  );
  const m = await a.scrape();
  assert.equal(m.get('emqx_ts_cluster_sessions_restored_total'), 1);
});

/**
 * The cluster thread is supervised like a shard: when it dies the supervisor starts a new one
 * (same cluster port), the shards get new ports to it, the peers see a new incarnation and
 * both sides resync, and forwarding works again. Node A runs in this process (to reach its
 * supervisor), node B is a separate process.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt from 'mqtt';
import { startBroker, waitFor, within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';

test('a cluster thread that dies is restarted, rejoins and forwards again', {
  timeout: 90_000,
}, async (t) => {
  const a = await startBroker(t, {
    'node.name': 'rsa@127.0.0.1',
    'cluster.discovery': 'static',
    'cluster.port': 0,
    'cluster.listen_host': '127.0.0.1',
    'cluster.advertise': '127.0.0.1',
    'cluster.down_after': 2,
  });
  const cluster = a.supervisor.cluster!;
  assert.ok(cluster.ready && cluster.port > 0);
  const b = await startNode(t, { name: 'rsb@127.0.0.1', seeds: [cluster.port] });

  const sub = mqtt.connect({ host: '127.0.0.1', port: b.mqttPort, clientId: 'rs-sub', reconnectPeriod: 0 });
  t.after(() => sub.end(true));
  await within(new Promise((r) => sub.once('connect', r)), 'subscriber connect');
  await sub.subscribeAsync('rs/#', { qos: 1 });
  const got: string[] = [];
  sub.on('message', (_topic, payload) => got.push(payload.toString()));
  const bRouted = () =>
    cluster.members.some((m) => m.name === b.name && m.status === 'running' && m.routes === 1);
  await waitFor(bRouted, 'A to hold B’s route');

  const pub = mqtt.connect({ host: '127.0.0.1', port: a.port, clientId: 'rs-pub', reconnectPeriod: 0 });
  t.after(() => pub.end(true));
  await within(new Promise((r) => pub.once('connect', r)), 'publisher connect');
  await pub.publishAsync('rs/1', 'before', { qos: 1 });
  await waitFor(() => got.length === 1, 'first forward');

  const port = cluster.port;
  cluster.crash();
  await waitFor(() => cluster.generation === 2 && cluster.ready, 'the cluster thread to restart', 20_000);
  assert.equal(cluster.port, port, 'same cluster port after the restart');
  await waitFor(bRouted, 'A’s new cluster thread to hold B’s route again', 20_000);
  // The publisher's shard sends through its new port to the new thread; B knows A's new incarnation.
  await b.waitPeer('rsa@127.0.0.1', 'running');
  await pub.publishAsync('rs/2', 'after', { qos: 1 });
  await waitFor(() => got.length === 2, 'forward after the restart', 20_000);
  assert.deepEqual(got, ['before', 'after']);
});

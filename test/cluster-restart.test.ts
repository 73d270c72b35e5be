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
import { pollUntil } from './helpers/cluster-clients.js';

/** Node A: a broker in this process (its supervisor is reachable), clustered on loopback. */
const inProcessNode = (t: Parameters<typeof startBroker>[0], name: string) =>
  startBroker(t, {
    'node.name': name,
    'cluster.discovery': 'static',
    'cluster.port': 0,
    'cluster.listen_host': '127.0.0.1',
    'cluster.advertise': '127.0.0.1',
    'cluster.down_after': 2,
  });

test('a cluster thread that dies is restarted, rejoins and forwards again', {
  timeout: 90_000,
}, async (t) => {
  const a = await inProcessNode(t, 'rsa@127.0.0.1');
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

test('a cluster thread that dies does not make its peers publish the wills of its clients, which are still connected [MQTT-3.1.2-8]', {
  timeout: 90_000,
}, async (t) => {
  const a = await inProcessNode(t, 'rwa@127.0.0.1');
  const cluster = a.supervisor.cluster!;
  const b = await startNode(t, { name: 'rwb@127.0.0.1', seeds: [cluster.port] });
  await b.waitPeer('rwa@127.0.0.1', 'running');
  const watch = mqtt.connect({
    host: '127.0.0.1',
    port: b.mqttPort,
    clientId: 'rw-watch',
    reconnectPeriod: 0,
  });
  t.after(() => watch.end(true));
  await within(new Promise((r) => watch.once('connect', r)), 'watcher connect');
  await watch.subscribeAsync('rw/#', { qos: 1 });
  const got: string[] = [];
  watch.on('message', (topic) => got.push(topic));
  const bRouted = () =>
    cluster.members.some((m) => m.name === b.name && m.status === 'running' && m.routes === 1);
  await waitFor(bRouted, 'A to hold B’s route');

  // A client with a will on A; B holds the will (replicated) before the crash.
  const client = mqtt.connect({
    host: '127.0.0.1',
    port: a.port,
    clientId: 'rw-client',
    reconnectPeriod: 0,
    will: { topic: 'rw/will', payload: Buffer.from('gone'), qos: 1, retain: false },
  });
  t.after(() => client.end(true));
  await within(new Promise((r) => client.once('connect', r)), 'client connect');
  await pollUntil(
    async () => (await b.scrape()).values.get('emqx_ts_cluster_wills_received_total') ?? 0,
    (n) => n >= 1,
    'B to hold the will',
  );

  cluster.crash();
  await waitFor(() => cluster.generation === 2 && cluster.ready, 'the cluster thread to restart', 20_000);
  await waitFor(bRouted, 'A’s new cluster thread to hold B’s route again', 20_000);
  await b.waitPeer('rwa@127.0.0.1', 'running');
  // The client is still connected to A: a marker it publishes now reaches B after any will would.
  await client.publishAsync('rw/marker', 'm', { qos: 1 });
  await waitFor(() => got.includes('rw/marker'), 'the marker through the new cluster thread', 20_000);
  assert.ok(client.connected, 'the client stayed connected');
  assert.deepEqual(got, ['rw/marker'], 'no will published for a client that is still connected');
});

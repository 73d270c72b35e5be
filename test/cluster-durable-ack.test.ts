/**
 * Cluster and `durability.mode = sync` together (docs/DURABILITY.md, "Modes"; src/shard/held-ack.ts):
 * the PUBACK of a QoS 1 PUBLISH that is forwarded to another node and also written here (a
 * persistent subscriber of this node) is held until both parts are done — this node's commit of
 * the subscriber's record, and the other node's acceptance of the forward. Two real node
 * processes on loopback (test/helpers/cluster.ts), real mqtt.js clients.
 *
 * Each part is made to come last in turn, so that the test fails if the PUBACK waits for only one:
 * - the remote one: the other node is stopped (SIGSTOP) while the local commit is done (observed
 *   as `emqx_ts_store_commits_total`); the PUBACK must still wait;
 * - the local one: `durability.sync_delay` is long (400 ms) against a forward accepted in a few
 *   ms; the publishing node is killed with SIGKILL right at the PUBACK, and the persistent
 *   subscriber must find the message on it after its restart [MQTT-4.3.2-2].
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import mqtt, { type IConnackPacket, type MqttClient } from 'mqtt';
import { within } from './helpers/broker.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import { connectTo, Inbox, pollUntil, subscribeTo } from './helpers/cluster-clients.js';

const T = 120_000;
const COMMITS = 'emqx_ts_store_commits_total';

const commits = async (n: TestNode): Promise<number> => (await n.scrape()).values.get(COMMITS) ?? 0;

/** Publishes at QoS 1; `acked` turns true when the PUBACK arrives. */
function publishTracked(
  c: MqttClient,
  topic: string,
  payload: string,
): { acked: () => boolean; done: Promise<void> } {
  let acked = false;
  const done = c.publishAsync(topic, payload, { qos: 1 }).then(() => {
    acked = true;
  });
  return { acked: () => acked, done };
}

test('sync + cluster: a QoS 1 PUBACK waits for the local commit and for the remote node; kill -9 at the PUBACK loses nothing', {
  timeout: T,
}, async (t) => {
  // down_after and the forward ack timeout far above the waits here: only B's answer (or
  // its absence) decides when a held ack goes.
  const timing = ['--cluster.forward_ack_timeout=60'];
  const argsA = ['--durability.mode=sync', '--durability.sync_delay=400', ...timing];
  const a = await startNode(t, { name: 'cda@127.0.0.1', downAfter: 60, args: argsA });
  const b = await startNode(t, {
    name: 'cdb@127.0.0.1',
    seeds: [a.clusterPort],
    downAfter: 60,
    args: ['--durability.mode=sync', ...timing],
  });
  // A's persistent subscriber, offline: what reaches it is queued and written to A's store.
  const localId = 'cd-local';
  const local = await connectTo(t, a, localId, { protocolVersion: 4, clean: false });
  await subscribeTo(local, 'cd/#', 1);
  await local.endAsync();
  // B's subscriber, online.
  const remote = new Inbox(await connectTo(t, b, 'cd-remote'));
  await subscribeTo(remote.c, 'cd/#', 1);
  await a.waitPeer(b.name, 'running', (r) => r === 1);
  const pub = await connectTo(t, a, 'cd-pub');

  // 1. B stopped: A commits its record for the local subscriber, and the PUBACK still waits for B.
  const before = await commits(a);
  b.child.kill('SIGSTOP');
  t.after(() => void b.child.kill('SIGCONT'));
  const m1 = publishTracked(pub, 'cd/1', 'while-b-stopped');
  await pollUntil(
    () => commits(a),
    (n) => n > before,
    "A's commit of the local subscriber's record",
  );
  // A's commit turn ends with the PUBACK when it is all the PUBACK waits for: a round trip to A
  // (an HTTP scrape) after that commit has it on the publisher's socket already.
  await a.scrape();
  assert.equal(m1.acked(), false, 'the PUBACK is held while the remote node has not accepted the forward');
  b.child.kill('SIGCONT');
  await within(m1.done, 'the PUBACK once B accepted the forward');
  await remote.until((g) => g.some((m) => m.payload === 'while-b-stopped'), 'the forward on B');

  // 2. The local commit is the slow part (sync_delay 400 ms): kill -9 A at the PUBACK.
  const m2 = publishTracked(pub, 'cd/2', 'kill-at-puback');
  await within(m2.done, 'the PUBACK');
  const dataDir = a.dataDir;
  await a.kill9();
  await remote.until((g) => g.some((m) => m.payload === 'kill-at-puback'), 'the forward on B');

  // A again on its data dir (and its cluster port): the local subscriber's session has both.
  const a2 = await startNode(t, {
    name: a.name,
    clusterPort: a.clusterPort,
    seeds: [b.clusterPort],
    downAfter: 60,
    dataDir,
    args: argsA,
  });
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  await a2.waitPeer(b.name, 'running');
  // The inbox listens before CONNACK: the stored messages follow it in the same read.
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: a2.mqttPort,
    clientId: localId,
    protocolVersion: 4,
    clean: false,
    reconnectPeriod: 0,
  });
  t.after(() => void c.end(true));
  const back = new Inbox(c);
  const connack = await within(
    new Promise<IConnackPacket>((resolve) => c.once('connect', resolve)),
    'the local subscriber to reconnect to the restarted A',
  );
  assert.equal(connack.sessionPresent, true, 'its session restored [MQTT-3.2.2-2]');
  const got = await back.until(
    (g) => ['while-b-stopped', 'kill-at-puback'].every((p) => g.some((m) => m.payload === p)),
    'both acked messages in the restored session on A',
  );
  assert.deepEqual(
    got.map((m) => m.payload).filter((p) => p === 'while-b-stopped' || p === 'kill-at-puback'),
    ['while-b-stopped', 'kill-at-puback'],
    'in order, once',
  );
});

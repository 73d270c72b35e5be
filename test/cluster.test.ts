/**
 * Cluster (issue #10): real nodes as separate processes on loopback, real MQTT clients. Each
 * node runs on its own ephemeral ports; nodes are killed with SIGKILL. Waits are on observable
 * state (REST /api/v5/nodes, received messages), never fixed sleeps.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';
import {
  connectTo as connect,
  Inbox as Sub,
  subscribeTo as sub,
  threeNodes,
} from './helpers/cluster-clients.js';

const T = 120_000;
type Ctx = { after: (fn: () => void | Promise<void>) => void };

/** Two nodes, n2 seeded with n1, with a QoS 1 subscriber on n2 to `filter` whose route n1 holds. */
async function pairWithSub(t: Ctx, prefix: string, downAfter: number, filter: string) {
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, downAfter });
  const n2 = await startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], downAfter });
  const s2 = new Sub(await connect(t, n2, `${prefix}-sub`));
  await sub(s2.c, filter, 1);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);
  return { n1, n2, s2 };
}

test('publishes on node 1 reach +/# subscribers on nodes 2 and 3 at QoS 0/1/2, MQTT 3.1.1 and 5, properties intact', {
  timeout: T,
}, async (t) => {
  const [n1, n2, n3] = await threeNodes(t, 'fw');
  const s2 = new Sub(await connect(t, n2, 's2-v4', { protocolVersion: 4 }));
  const s3 = new Sub(await connect(t, n3, 's3-v5', { protocolVersion: 5 }));
  await sub(s2.c, 'sensors/+/temp', 2);
  await sub(s3.c, 'sensors/#', 2);
  await Promise.all([
    n1.waitPeer(n2.name, 'running', (r) => r >= 1),
    n1.waitPeer(n3.name, 'running', (r) => r >= 1),
  ]);

  const pub = await connect(t, n1, 'p1-v5', { protocolVersion: 5 });
  for (const qos of [0, 1, 2] as const) {
    await pub.publishAsync(`sensors/room${qos}/temp`, `t${qos}`, {
      qos,
      properties: {
        userProperties: { zeta: 'last?', alpha: ['1', '2'] },
        contentType: 'text/plain',
        messageExpiryInterval: 3600,
        payloadFormatIndicator: true,
        correlationData: Buffer.from([1, 2, 3]),
        responseTopic: 'reply/here',
      },
    });
  }
  const at2 = await s2.wait(3, 'n2 (v3.1.1, sensors/+/temp)');
  const at3 = await s3.wait(3, 'n3 (v5, sensors/#)');
  // Subscribed at QoS 2: each message arrives at the QoS it was published with [MQTT-3.8.4-8].
  assert.deepEqual(
    at2.map((m) => [m.topic, m.payload, m.qos]),
    [0, 1, 2].map((q) => [`sensors/room${q}/temp`, `t${q}`, q]),
  );
  assert.deepEqual(
    at3.map((m) => [m.topic, m.payload, m.qos]),
    [0, 1, 2].map((q) => [`sensors/room${q}/temp`, `t${q}`, q]),
  );
  for (const m of at3) {
    const p = m.props!;
    // User Property order kept [MQTT-3.3.2-18]; the others forwarded unaltered [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-20].
    assert.deepEqual({ ...p.userProperties }, { zeta: 'last?', alpha: ['1', '2'] });
    assert.deepEqual(Object.keys(p.userProperties!), ['zeta', 'alpha']);
    assert.equal(p.contentType, 'text/plain');
    assert.equal(p.payloadFormatIndicator, true);
    assert.deepEqual([...(p.correlationData as Buffer)], [1, 2, 3]);
    assert.equal(p.responseTopic, 'reply/here');
    // Remaining expiry: at most what was set, and not reset to none [MQTT-3.3.2-6].
    assert.ok(
      p.messageExpiryInterval! > 3500 && p.messageExpiryInterval! <= 3600,
      `expiry ${p.messageExpiryInterval}`,
    );
  }
  // Retain flag preserved on the wire: a live delivery has RETAIN 0 unless Retain As Published [MQTT-3.3.1-12].
  const rap = new Sub(await connect(t, n2, 's2-rap', { protocolVersion: 5 }));
  await rap.c.subscribeAsync('retained/+', { qos: 1, rap: true });
  await n1.waitPeer(n2.name, 'running', (r) => r >= 2);
  await pub.publishAsync('retained/x', 'kept', { qos: 1, retain: true });
  const [r] = await rap.wait(1, 'retained publish with Retain As Published');
  assert.equal(r.retain, true, 'RETAIN as published [MQTT-3.3.1-13]');

  const m1 = await n1.scrape();
  assert.ok(m1.get('emqx_messages_forward') >= 7, 'emqx_messages_forward counts forwards');
  assert.equal(m1.get('emqx_cluster_nodes_running'), 3);
  assert.equal(m1.get('emqx_cluster_nodes_stopped'), 0);
});

test('a late joiner receives existing routes; unsubscribe removes the route everywhere', {
  timeout: T,
}, async (t) => {
  const n1 = await startNode(t, { name: 'late1@127.0.0.1' });
  const n2 = await startNode(t, { name: 'late2@127.0.0.1', seeds: [n1.clusterPort] });
  const s2 = new Sub(await connect(t, n2, 'late-sub'));
  await sub(s2.c, 'late/#', 1);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);

  // n3 starts after the subscription exists: it gets n2's slice in n2's join (full sync).
  const n3 = await startNode(t, { name: 'late3@127.0.0.1', seeds: [n1.clusterPort] });
  await n3.waitPeer(n2.name, 'running', (r) => r === 1);
  const pub = await connect(t, n3, 'late-pub');
  await pub.publishAsync('late/a', 'from n3', { qos: 1 });
  const [m] = await s2.wait(1, 'message from the late joiner');
  assert.deepEqual([m.topic, m.payload, m.qos], ['late/a', 'from n3', 1]);

  await s2.c.unsubscribeAsync('late/#');
  await Promise.all([
    n1.waitPeer(n2.name, 'running', (r) => r === 0),
    n3.waitPeer(n2.name, 'running', (r) => r === 0),
  ]);
  const before = (await n3.scrape()).get('emqx_messages_forward');
  await pub.publishAsync('late/b', 'nobody', { qos: 1 });
  // A marker subscriber on n3 itself proves the publish was routed before we look at counters.
  const local = new Sub(await connect(t, n3, 'late-local'));
  await sub(local.c, 'late/#', 1);
  await pub.publishAsync('late/c', 'marker', { qos: 1 });
  await local.wait(1, 'local marker');
  assert.equal(
    (await n3.scrape()).get('emqx_messages_forward'),
    before,
    'nothing forwarded after the unsubscribe',
  );
  assert.equal(s2.got.length, 1);
});

test('kill -9 of a node: others mark it down within down_after and keep serving; it rejoins and routes resync', {
  timeout: T,
}, async (t) => {
  const downAfter = 2;
  const n1 = await startNode(t, { name: 'kill1@127.0.0.1', downAfter });
  const n2 = await startNode(t, { name: 'kill2@127.0.0.1', seeds: [n1.clusterPort], downAfter });
  const n3 = await startNode(t, { name: 'kill3@127.0.0.1', seeds: [n1.clusterPort], downAfter });
  const s2 = new Sub(await connect(t, n2, 'kill-s2'));
  await sub(s2.c, 'k/+', 1);
  const s3 = new Sub(await connect(t, n3, 'kill-s3'));
  await sub(s3.c, 'k/+', 1);
  // A full mesh first: n2 and n3 seed only n1 and learn each other through it.
  await Promise.all([
    n1.waitPeer(n2.name, 'running', (r) => r === 1),
    n1.waitPeer(n3.name, 'running', (r) => r === 1),
    n2.waitPeer(n3.name, 'running', (r) => r === 1),
  ]);

  const killedAt = Date.now();
  await n3.kill9();
  await n1.waitPeer(n3.name, 'stopped', undefined, 15_000);
  const tookMs = Date.now() - killedAt;
  // down_after plus one heartbeat period plus one REST poll, with slack for a loaded machine.
  assert.ok(tookMs < downAfter * 1000 + 3000, `marked down after ${tookMs} ms`);
  await n2.waitPeer(n3.name, 'stopped', undefined, 15_000);
  const m1 = await n1.scrape();
  assert.equal(m1.get('emqx_cluster_nodes_running'), 2);
  assert.equal(m1.get('emqx_cluster_nodes_stopped'), 1);

  // Still serving: n1 → n2 works while n3 is gone.
  const pub = await connect(t, n1, 'kill-pub');
  await pub.publishAsync('k/1', 'while n3 is down', { qos: 1 });
  assert.equal((await s2.wait(1, 'n2 while n3 is down'))[0].payload, 'while n3 is down');

  // n3 comes back (new incarnation, same cluster port): it rejoins, its new subscription's route resyncs.
  const n3b = await startNode(t, {
    name: 'kill3@127.0.0.1',
    seeds: [n1.clusterPort],
    downAfter,
    clusterPort: n3.clusterPort,
  });
  const s3b = new Sub(await connect(t, n3b, 'kill-s3b'));
  await sub(s3b.c, 'k/#', 1);
  await n1.waitPeer(n3b.name, 'running', (r) => r === 1);
  await n3b.waitPeer(n2.name, 'running', (r) => r === 1);
  await pub.publishAsync('k/2', 'after rejoin', { qos: 1 });
  assert.equal((await s3b.wait(1, 'rejoined n3'))[0].payload, 'after rejoin');
  assert.equal((await s2.wait(2, 'n2 after rejoin'))[1].payload, 'after rejoin');
  const nodes = await n1.nodes();
  assert.deepEqual(nodes.map((n) => [n.node, n.node_status]).sort(), [
    ['kill1@127.0.0.1', 'running'],
    ['kill2@127.0.0.1', 'running'],
    ['kill3@127.0.0.1', 'running'],
  ]);
});

test('10k QoS 1 messages from one publisher arrive in order on another node', { timeout: T }, async (t) => {
  const n1 = await startNode(t, { name: 'ord1@127.0.0.1', shards: 2 });
  // A session queue that holds them all: this test is about the link, not the subscriber's queue limit.
  const n2 = await startNode(t, {
    name: 'ord2@127.0.0.1',
    seeds: [n1.clusterPort],
    shards: 2,
    args: ['--mqtt.max_mqueue_len=20000'],
  });
  const s = new Sub(await connect(t, n2, 'ord-sub'));
  await sub(s.c, 'ord/#', 1);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);
  const pub = await connect(t, n1, 'ord-pub');
  const N = 10_000;
  const sends: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) sends.push(pub.publishAsync('ord/x', String(i), { qos: 1 }));
  await Promise.all(sends);
  const got = await s.wait(N, '10k ordered', 90_000).catch(async (err) => {
    const [m1, m2] = await Promise.all([n1.scrape(), n2.scrape()]);
    const drops = ['emqx_ts_cluster_forward_dropped_total', 'emqx_delivery_dropped_queue_full'];
    throw new Error(
      `${(err as Error).message.slice(0, 200)}; n1/n2 ${drops.map((d) => `${d}=${m1.values.get(d)}/${m2.values.get(d)}`)}`,
    );
  });
  assert.equal((await n1.scrape()).get('emqx_ts_cluster_forward_dropped_total'), 0);
  // Per-publisher order across nodes [MQTT-4.6.0-5]: no gaps, no reordering.
  for (let i = 0; i < N; i++)
    if (got[i].payload !== String(i)) assert.fail(`message ${i} is ${got[i].payload}`);
});

test('a node that stops gracefully (SIGTERM) leaves: peers mark it stopped at once, not after down_after', {
  timeout: T,
}, async (t) => {
  // down_after 60 s: only the Leave call can make the peer see it stopped within the 10 s wait.
  const n1 = await startNode(t, { name: 'leave1@127.0.0.1', downAfter: 60 });
  const n2 = await startNode(t, { name: 'leave2@127.0.0.1', seeds: [n1.clusterPort], downAfter: 60 });
  await n1.waitPeer(n2.name, 'running');
  n2.child.kill('SIGTERM');
  await n1.waitPeer(n2.name, 'stopped', undefined, 10_000);
  await within(n2.exited, 'leave2 to exit');
});

test('a forwarded QoS 1 PUBLISH is acknowledged only once the remote node has accepted it, or is known down', {
  timeout: T,
}, async (t) => {
  const downAfter = 3;
  const { n1, n2, s2 } = await pairWithSub(t, 'ack', downAfter, 'ack/#');
  const pub = await connect(t, n1, 'ack-pub');
  await pub.publishAsync('ack/1', 'accepted', { qos: 1 });
  await s2.wait(1, 'first forward');

  // Frozen, n2 neither accepts the batch nor answers heartbeats: the PUBACK waits until n1
  // marks it down (at least down_after minus one heartbeat period after the freeze).
  n2.child.kill('SIGSTOP');
  t.after(() => void n2.child.kill('SIGCONT'));
  const sentAt = Date.now();
  const ackedAt = pub.publishAsync('ack/2', 'frozen', { qos: 1 }).then(() => Date.now());
  // A publish that goes nowhere else is acked at once meanwhile (held acks keep PUBLISH order,
  // so it is on another connection).
  const other = await connect(t, n1, 'ack-other');
  const t0 = Date.now();
  await other.publishAsync('local/only', 'x', { qos: 1 });
  const localMs = Date.now() - t0;
  const heldMs = (await within(ackedAt, 'PUBACK once n2 is down', 30_000)) - sentAt;
  assert.ok(heldMs >= downAfter * 1000 - 1000, `PUBACK came after ${heldMs} ms, before n2 could be down`);
  assert.ok(localMs < heldMs, `a local-only PUBACK took ${localMs} ms`);
  await n1.waitPeer(n2.name, 'stopped');
});

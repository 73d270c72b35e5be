/**
 * Readiness of a clustered node (/readyz, what Kubernetes routes clients by): a node is ready
 * only once its first join round is over and it holds the routes of every peer that answered.
 * Before that, a publisher it accepted would be acked (QoS 1) and its messages to remote
 * subscribers routed nowhere. Real node processes on loopback, real HTTP and MQTT clients.
 */
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { startNode, type TestNode } from './helpers/cluster.js';
import { connectTo, Inbox, subscribeTo } from './helpers/cluster-clients.js';

async function readyz(n: TestNode): Promise<{ status: number; body: { clusterSynced?: boolean } }> {
  const res = await fetch(`http://127.0.0.1:${n.metricsPort}/readyz`);
  return { status: res.status, body: (await res.json()) as { clusterSynced?: boolean } };
}

/** Polls /readyz every 10 ms until it says 200; resolves with the polls that said 503. */
async function untilReady(n: TestNode, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let notReady = 0;
  for (;;) {
    const r = await readyz(n);
    if (r.status === 200) return notReady;
    assert.equal(r.body.clusterSynced, false, 'not ready only for the cluster sync here');
    notReady++;
    if (Date.now() > deadline) throw new Error(`${n.name} never became ready`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('a node joining a cluster is ready (/readyz 200) only once it holds its peers’ routes: a publisher it then accepts reaches a subscriber on the peer', {
  timeout: 90_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'rdy1@127.0.0.1' });
  const sub = new Inbox(await connectTo(t, n1, 'rdy-sub'));
  await subscribeTo(sub.c, 'rdy/#', 1);
  assert.equal((await readyz(n1)).status, 200);

  const n2 = await startNode(t, { name: 'rdy2@127.0.0.1', seeds: [n1.clusterPort] });
  await untilReady(n2);
  // At the moment it says ready, n2 holds n1's route for rdy/#.
  const view = (await n2.nodes()).find((x) => x.node === n1.name) as { routes?: number } | undefined;
  assert.equal(view?.routes, 1, 'n1’s route is on n2 when n2 becomes ready');
  const pub = await connectTo(t, n2, 'rdy-pub');
  await pub.publishAsync('rdy/1', 'first', { qos: 1 });
  assert.equal((await sub.wait(1, 'the first message published on n2'))[0].payload, 'first');
});

test('a node whose seed never answers becomes ready after the bounded first join round, and serves', {
  timeout: 90_000,
}, async (t) => {
  // A seed that accepts TCP and never speaks: the join call times out (cluster.down_after 2 s).
  const held: Socket[] = [];
  const hole = createServer((s) => held.push(s));
  await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of held) s.destroy();
    hole.close();
  });
  const port = (hole.address() as { port: number }).port;
  const n = await startNode(t, { name: 'rdyh@127.0.0.1', seeds: [port] });
  const t0 = Date.now();
  const notReady = await untilReady(n);
  assert.ok(notReady > 0, 'not ready while its first join round waited for the seed');
  assert.ok(Date.now() - t0 < 15_000, 'ready within the bound (2 join timeouts + 1 s)');
  const c = new Inbox(await connectTo(t, n, 'rdyh-c'));
  await subscribeTo(c.c, 'h/x', 0);
  await c.c.publishAsync('h/x', 'alone', { qos: 0 });
  assert.equal((await c.wait(1, 'its own message'))[0].payload, 'alone');
});

/**
 * Cluster liveness (issue #11): any traffic from a peer proves it alive, the state plane's
 * calls too (retained replication, wills, shared groups, claims, takeovers; src/cluster/peers.ts
 * `touch`), not only heartbeats and forwards: under load a heartbeat may wait behind other
 * traffic past down_after while the rest flows. Node 2 here sends no heartbeats and refuses
 * node 1's (a test switch, EMQX_TS_TEST_MUTE_HEARTBEATS); while its clients publish retained
 * messages (replicated to node 1), node 1 keeps it running; once they stop, node 1 marks it
 * down within down_after (the control: its heartbeats really are silent). Real processes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startNode } from './helpers/cluster.js';
import { connectTo } from './helpers/cluster-clients.js';

test('a peer whose heartbeats are silent but whose state-plane calls flow is not declared down', {
  timeout: 120_000,
}, async (t) => {
  const downAfter = 2;
  const n1 = await startNode(t, { name: 'lv1@127.0.0.1', downAfter });
  const n2 = await startNode(t, {
    name: 'lv2@127.0.0.1',
    seeds: [n1.clusterPort],
    downAfter,
    env: { EMQX_TS_TEST_MUTE_HEARTBEATS: '1' },
  });
  await n1.waitPeer(n2.name, 'running');
  const pub = await connectTo(t, n2, 'lv-pub');

  // 3 × down_after of retained updates on n2 (each PUBACK waits for n1 to store it).
  const start = Date.now();
  let n = 0;
  while (Date.now() - start < 3 * downAfter * 1000) {
    await pub.publishAsync(`lv/${n % 10}`, String(n), { qos: 1, retain: true });
    n++;
    if (n % 20 === 0) {
      const seen = (await n1.nodes()).find((x) => x.node === n2.name);
      assert.equal(seen?.node_status, 'running', `n2 running on n1 after ${Date.now() - start} ms`);
    }
  }
  const seen = (await n1.nodes()).find((x) => x.node === n2.name);
  assert.equal(seen?.node_status, 'running', `n2 still running after ${n} retained updates`);

  // Silence: n1 now declares it down (its heartbeats never reached n1).
  const quiet = Date.now();
  await n1.waitPeer(n2.name, 'stopped', undefined, 10 * downAfter * 1000);
  t.diagnostic(
    `${n} retained updates over ${quiet - start} ms; marked down ${Date.now() - quiet} ms after they stopped`,
  );
});

/**
 * Cluster II (issue #11): a retained QoS 1/2 PUBLISH's PUBACK/PUBREC waits until every running
 * peer has the message in its store; a peer that does not confirm while it is not known down
 * (a frozen node: SIGSTOP, its down_after not passed or just passed) makes it reason 0x80 for an
 * MQTT 5 publisher, as a forward to that peer would (test/cluster-breaks.test.ts), so that the
 * publisher knows a subscriber there may not see it. Real nodes as processes, real clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';
import { connectTo, Inbox, subscribeTo } from './helpers/cluster-clients.js';

/** The PUBACK/PUBREC reason code of a retained PUBLISH: 0 on success. */
function retainCode(c: MqttClient, topic: string, payload: string, qos: 1 | 2): Promise<number> {
  return c.publishAsync(topic, payload, { qos, retain: true }).then(
    () => 0,
    (err: { code?: number }) => err.code ?? -1,
  );
}

test('a retained PUBACK waits for every running peer to store it; a frozen peer makes it 0x80 (MQTT 5), counted', {
  timeout: 120_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'ra1@127.0.0.1', downAfter: 2 });
  const n2 = await startNode(t, { name: 'ra2@127.0.0.1', seeds: [n1.clusterPort], downAfter: 2 });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  const pub = await connectTo(t, n1, 'ra-pub', { protocolVersion: 5 });

  // Acked: in n2's store, so a subscriber there at once gets it [MQTT-3.3.1-6].
  for (let i = 0; i < 5; i++) {
    assert.equal(await retainCode(pub, `ra/ok/${i}`, `v${i}`, 1), 0);
    const s = await connectTo(t, n2, `ra-sub${i}`);
    const inbox = new Inbox(s);
    await subscribeTo(s, `ra/ok/${i}`, 1);
    const [got] = await inbox.wait(1, `the retained message ${i} on n2`);
    assert.equal(got.payload, `v${i}`);
    assert.equal(got.retain, true);
    s.end(true);
  }

  const before = await n1.scrape();
  n2.child.kill('SIGSTOP');
  t.after(() => void n2.child.kill('SIGCONT'));
  const q1 = await within(retainCode(pub, 'ra/frozen/1', 'x', 1), 'PUBACK with n2 frozen');
  const q2 = await within(retainCode(pub, 'ra/frozen/2', 'y', 2), 'PUBREC with n2 frozen');
  assert.equal(q1, 0x80, 'PUBACK 0x80: n2 did not confirm');
  assert.equal(q2, 0x80, 'PUBREC 0x80: n2 did not confirm');
  const after = await n1.scrape();
  assert.ok(
    after.get('emqx_ts_cluster_held_acks_failed_total') -
      before.get('emqx_ts_cluster_held_acks_failed_total') >=
      2,
    'failed acks counted',
  );

  // Thawed: it is back (running again, or rejoined after being marked down); acks are 0 again,
  // and the frozen-time messages reached it (the join's full sync or the late call).
  n2.child.kill('SIGCONT');
  await n1.waitPeer(n2.name, 'running');
  await n2.waitPeer(n1.name, 'running');
  let code = -1;
  for (let i = 0; i < 50 && code !== 0; i++) code = await retainCode(pub, 'ra/after', String(i), 1);
  assert.equal(code, 0, 'acked once n2 answers again');
});

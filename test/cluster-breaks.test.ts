/**
 * A broken or stalled forward stream never holds a QoS 1/2 publisher's ack forever: the ack goes
 * with reason 0x80 (MQTT 5) once the stream broke (kill -9 of the peer) or a batch waited past
 * cluster.forward_ack_timeout (a SIGSTOPped peer whose down_after has not passed), counted.
 * QoS 0 between nodes is at most once (what was in the broken stream is gone, not resent).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UniqueMessageIdProvider } from 'mqtt';
import { waitFor, within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';
import { connectTo as connect, Inbox as Sub, subscribeTo as sub } from './helpers/cluster-clients.js';

const T = 120_000;
type Ctx = { after: (fn: () => void | Promise<void>) => void };

/** Resolves with the PUBACK/PUBREC/PUBCOMP reason code: 0 on success. */
function publishCode(
  c: import('mqtt').MqttClient,
  topic: string,
  payload: string,
  qos: 1 | 2,
): Promise<number> {
  return c.publishAsync(topic, payload, { qos }).then(
    () => 0,
    (err: { code?: number }) => err.code ?? -1,
  );
}

/** Two nodes with these timings, a subscriber to `prefix/#` on n2 whose route n1 holds. */
async function pair(t: Ctx, prefix: string, downAfter: number, ackTimeout: number, qos: 1 | 2) {
  const args = [`--cluster.forward_ack_timeout=${ackTimeout}`];
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, downAfter, args });
  const n2 = await startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], downAfter, args });
  const s2 = new Sub(await connect(t, n2, `${prefix}-sub`));
  await sub(s2.c, `${prefix}/#`, qos);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);
  return { n1, n2, s2 };
}

test('a stalled peer (SIGSTOP) before down_after: held PUBACK/PUBREC go with 0x80 after forward_ack_timeout, counted; the QoS 2 id is free again', {
  timeout: T,
}, async (t) => {
  // down_after 60 s: only the ack timeout (1 s) can release the acks within the waits below.
  const { n1, n2, s2 } = await pair(t, 'stall', 60, 1, 2);
  // Lowest free packet id first: a failed PUBREC's id is reused by the next QoS 2 publish.
  const pub = await connect(t, n1, 'stall-pub', {
    protocolVersion: 5,
    messageIdProvider: new UniqueMessageIdProvider(),
  });
  assert.equal(await publishCode(pub, 'stall/ok', 'before', 2), 0);
  await s2.wait(1, 'first forward');
  const before = await n1.scrape();

  n2.child.kill('SIGSTOP');
  t.after(() => void n2.child.kill('SIGCONT'));
  const t0 = Date.now();
  // QoS 2 first, alone: it takes packet id 1, which the publish after the thaw reuses.
  const q2 = await within(publishCode(pub, 'stall/b', 'q2', 2), 'PUBREC from the stalled stream');
  const q1 = await within(publishCode(pub, 'stall/a', 'q1', 1), 'PUBACK from the stalled stream');
  const took = Date.now() - t0;
  assert.equal(q1, 0x80, 'PUBACK 0x80 Unspecified error');
  assert.equal(q2, 0x80, 'PUBREC 0x80 Unspecified error');
  assert.ok(took >= 900, `acks after ${took} ms: before the ack timeout`);
  // Not down: the stall was detected by the ack timeout, not by heartbeats.
  const seen = (await n1.nodes()).find((n) => n.node === n2.name);
  assert.equal(seen?.node_status, 'running');
  const after = await n1.scrape();
  const delta = (name: string) => after.get(name) - before.get(name);
  assert.ok(delta('emqx_ts_cluster_forward_timeouts_total') >= 1, 'stalls counted');
  assert.equal(delta('emqx_ts_cluster_held_acks_failed_total'), 2, 'failed held acks counted');

  // The peer thaws: forwarding works again on a new stream, and the QoS 2 packet id whose
  // PUBREC failed is not still awaiting PUBREL (it would be taken for a duplicate and dropped).
  n2.child.kill('SIGCONT');
  let code = -1;
  const deadline = Date.now() + 15_000;
  for (let i = 0; code !== 0 && Date.now() < deadline; i++) {
    code = await publishCode(pub, 'stall/after', `after${i}`, 2);
    if (code !== 0) await new Promise((r) => setTimeout(r, 100)); // a retry, as a publisher would
  }
  assert.equal(code, 0, 'a QoS 2 publish is accepted again once the peer runs');
  await waitFor(() => s2.got.some((m) => m.payload.startsWith('after')), 'delivery after the thaw');
});

test('kill -9 of a peer: the broken stream releases held acks at once with 0x80 (not after down_after or the ack timeout), counted; the node keeps serving', {
  timeout: T,
}, async (t) => {
  // Both 30 s: only the stream break can release the acks within the 8 s bound below.
  const { n1, n2, s2 } = await pair(t, 'brk', 30, 30, 1);
  const pub = await connect(t, n1, 'brk-pub', { protocolVersion: 5 });
  const before = await n1.scrape();

  // A steady stream of QoS 1 publishes, up to 100 unacknowledged.
  const codes: number[] = [];
  const pending = new Set<Promise<number>>();
  let stop = false;
  let i = 0;
  const pump = (async () => {
    while (!stop) {
      const p = publishCode(pub, 'brk/x', String(i++), 1);
      pending.add(p);
      void p.then((c) => {
        codes.push(c);
        pending.delete(p);
      });
      if (pending.size >= 100) await Promise.race(pending);
    }
  })();
  await s2.wait(300, 'forwards before the kill');
  const killedAt = Date.now();
  await n2.kill9();
  // Keep publishing a second after the kill: those go to a dead peer (not yet known down).
  await new Promise((r) => setTimeout(r, 1000));
  stop = true;
  await pump;
  await within(Promise.all(pending), 'every publish to be acknowledged', 8_000);
  const settledMs = Date.now() - killedAt;
  assert.ok(settledMs < 8_000, `all acks within ${settledMs} ms of the kill`);
  const failed = codes.filter((c) => c === 0x80).length;
  assert.ok(failed > 0, 'publishes to the dead peer were acked as failed');
  assert.deepEqual(
    codes.filter((c) => c !== 0 && c !== 0x80),
    [],
    'only success or 0x80',
  );
  const after = await n1.scrape();
  const delta = (name: string) => after.get(name) - before.get(name);
  assert.equal(delta('emqx_ts_cluster_held_acks_failed_total'), failed, 'each failed ack counted');
  assert.ok(delta('emqx_ts_cluster_stream_breaks_total') >= 1, 'the break counted');
  assert.equal(delta('emqx_ts_cluster_forward_timeouts_total'), 0, 'not a timeout');
  // Still serving, and n2 not yet down (down_after 30 s): it was the break that released them.
  assert.equal((await n1.nodes()).find((n) => n.node === n2.name)?.node_status, 'running');
  const local = new Sub(await connect(t, n1, 'brk-local'));
  await sub(local.c, 'local/#', 1);
  assert.equal(await publishCode(pub, 'local/1', 'x', 1), 0);
  await local.wait(1, 'local delivery');
});

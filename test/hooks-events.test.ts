/**
 * Hook events (issue #12, src/hooks) from real clients over real sockets, reported by a hook
 * module (test/fixtures/hooks/events.mjs) that runs in every shard thread: session created,
 * resumed and discarded, subscribe, delivered, dropped (no subscribers, queue full), disconnect,
 * and onWill suppressing one will while another is published.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hookFixture } from './helpers/auth.js';
import {
  client,
  client5,
  endClient,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  waitFor,
} from './helpers/broker.js';

const T = 60_000;

interface HookEvent {
  e: string;
  id: string | null;
  topic?: string;
  filter?: string;
  qos?: number;
  reason?: string;
}

test('hooks: session, subscribe, delivered, dropped, disconnect and will events reach a hook in every shard; onWill false suppresses a will [MQTT-3.1.2-8]', {
  timeout: T,
}, async (t) => {
  const events: HookEvent[] = [];
  const channel = new BroadcastChannel('emqx-ts-test-hook-events');
  channel.onmessage = (m) => events.push((m as { data: HookEvent }).data);
  t.after(() => channel.close());
  const seen = (pred: (e: HookEvent) => boolean, what: string): Promise<void> =>
    waitFor(() => events.some(pred), what);
  const broker = await startBroker(t, {
    'hooks.modules': hookFixture('events.mjs'),
    'mqtt.max_mqueue_len': 1,
  });

  // Subscriber on shard 0, publisher and will clients on shard 1: events come from both threads.
  const subId = idOnShard(broker, 0, 'ev-sub');
  const { c: sub, inbox } = await client5(t, broker, { clientId: subId });
  await seen((e) => e.e === 'onSessionCreated' && e.id === subId, 'onSessionCreated');
  await new Promise<void>((resolve, reject) =>
    sub.subscribe('ev/#', { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
  await seen(
    (e) => e.e === 'onSubscribe' && e.id === subId && e.filter === 'ev/#' && e.qos === 1,
    'onSubscribe',
  );

  const pubId = idOnShard(broker, 1, 'ev-pub');
  const pub = await client(t, broker, { clientId: pubId });
  await publish(pub, 'ev/a', 'x', { qos: 1 });
  await seen(
    (e) => e.e === 'onMessageDelivered' && e.id === subId && e.topic === 'ev/a' && e.qos === 1,
    'onMessageDelivered',
  );
  await publish(pub, 'nobody/x', 'x', { qos: 1 });
  await seen(
    (e) =>
      e.e === 'onMessageDropped' && e.id === pubId && e.topic === 'nobody/x' && e.reason === 'no_subscribers',
    'onMessageDropped no_subscribers',
  );

  // Two clients with wills lose their connections: both wills go to onWill, one is suppressed.
  const sent = idOnShard(broker, 1, 'ev-w1');
  const suppressed = idOnShard(broker, 1, 'ev-w2');
  const w1 = await client(t, broker, {
    clientId: sent,
    will: { topic: 'ev/will/sent', payload: Buffer.from('w'), qos: 1, retain: false },
  });
  const w2 = await client(t, broker, {
    clientId: suppressed,
    will: { topic: 'ev/will/suppressed', payload: Buffer.from('w'), qos: 1, retain: false },
  });
  w1.stream.destroy();
  w2.stream.destroy();
  for (const id of [sent, suppressed]) {
    await seen((e) => e.e === 'onDisconnect' && e.id === id, `onDisconnect ${id}`);
    await seen((e) => e.e === 'onWill' && e.id === id, `onWill ${id}`);
    // MQTT 3.1.1 clean session: the session ends with the connection.
    await seen((e) => e.e === 'onSessionDiscarded' && e.id === id, `onSessionDiscarded ${id}`);
  }
  // A marker after both wills: the subscriber has the sent will and never the suppressed one.
  await publish(pub, 'ev/marker', 'm', { qos: 1 });
  const got = await inbox.wait(3);
  await waitFor(() => inbox.packets.some((p) => p.topic === 'ev/marker'), 'marker');
  const topics = inbox.packets.map((p) => p.topic);
  assert.ok(got.length >= 3);
  assert.ok(topics.includes('ev/will/sent'), topics.join());
  assert.ok(!topics.includes('ev/will/suppressed'), topics.join());

  // A persistent session: resumed on reconnect; while offline its queue (max 1) drops the oldest.
  const pId = idOnShard(broker, 0, 'ev-p');
  const p1 = await client(t, broker, { clientId: pId, clean: false });
  await subscribe(p1, 'q/#', 1);
  await endClient(p1);
  await publish(pub, 'q/1', '1', { qos: 1 });
  await publish(pub, 'q/2', '2', { qos: 1 });
  await seen(
    (e) => e.e === 'onMessageDropped' && e.id === pId && e.topic === 'q/1' && e.reason === 'queue_full',
    'onMessageDropped queue_full',
  );
  await client(t, broker, { clientId: pId, clean: false });
  await seen((e) => e.e === 'onSessionResumed' && e.id === pId, 'onSessionResumed');
});

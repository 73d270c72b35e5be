/**
 * Shard supervision: a shard thread that dies (uncaught exception, or terminated) takes its
 * clients with it and is restarted; the other shards and the broker keep running; past the
 * restart intensity the supervisor gives up. Real broker threads, real TCP clients.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import {
  client,
  closed,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  startBrokerWith,
  subscribe,
  waitFor,
  waitForMessage,
} from './helpers/broker.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;

let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} }, { 'node.shards': 2 });
});
after(() => broker.stop());

/** Resolves when shard `id` runs again as generation `generation` and has reported ready. */
async function restarted(b: Broker, id: number, generation: number): Promise<void> {
  const s = b.supervisor.shards[id];
  await waitFor(
    () => s.generation >= generation && s.ready && s.worker !== null,
    `shard ${id} generation ${generation} ready`,
  );
}

const crashes: [name: string, crash: (b: Broker) => void][] = [
  ['an uncaught exception', (b) => b.supervisor.post(0, { t: 'crash' })],
  ['Worker.terminate()', (b) => void b.supervisor.shards[0].worker!.terminate()],
];

for (const [how, crash] of crashes) {
  test(`a shard killed by ${how} is restarted; its clients are disconnected, the other shard's keep working`, {
    timeout: T,
  }, async (t) => {
    const tag = how.startsWith('an') ? 'exc' : 'term';
    const dead = await client(t, broker, { clientId: idOnShard(broker, 0, `${tag}-dead`) });
    const dead2 = await client(t, broker, { clientId: idOnShard(broker, 0, `${tag}-dead2`) });
    const alive = await client(t, broker, { clientId: idOnShard(broker, 1, `${tag}-alive`) });
    const pub = await client(t, broker, { clientId: idOnShard(broker, 1, `${tag}-pub`) });
    const aliveInbox = new Inbox(alive);
    await subscribe(dead, `${tag}/only-dead`, 1);
    await subscribe(dead, `${tag}/shared`, 1);
    await subscribe(alive, `${tag}/shared`, 1);
    // Routing works across shards before the crash.
    await publish(pub, `${tag}/shared`, 'before', { qos: 1 });
    await waitForMessage(aliveInbox, (m) => m.payload === 'before');

    const shard0 = broker.supervisor.shards[0];
    const generation = shard0.generation;
    const before = broker.counters.snapshot();
    const gone = [closed(dead), closed(dead2)];
    crash(broker);

    // The dead shard's connections are closed with it.
    await Promise.all(gone);
    await waitFor(
      () => broker.counters.snapshot().shardRestarts === before.shardRestarts + 1,
      'shardRestarts + 1',
    );
    // The other shard's client was not touched and still works, while shard 0 restarts.
    assert.equal(alive.connected, true);
    await publish(pub, `${tag}/shared`, 'during', { qos: 1 });
    await waitForMessage(aliveInbox, (m) => m.payload === 'during');

    await restarted(broker, 0, generation + 1);
    assert.equal(shard0.generation, generation + 1);

    // The dead shard's subscriptions are gone from the topic index: a message to a topic only
    // it had subscribed is routed nowhere (counted as no subscribers) and breaks nothing.
    const dropped = broker.counters.snapshot().messagesDroppedNoSubscribers;
    await publish(pub, `${tag}/only-dead`, 'nobody', { qos: 1 });
    await waitFor(
      () => broker.counters.snapshot().messagesDroppedNoSubscribers === dropped + 1,
      'messagesDroppedNoSubscribers + 1',
    );

    // New clients on the restarted shard connect, and pub/sub works in both directions.
    const fresh = await client(t, broker, { clientId: idOnShard(broker, 0, `${tag}-fresh`) });
    const freshInbox = new Inbox(fresh);
    assert.deepEqual(await subscribe(fresh, `${tag}/to-0`, 1), [1]);
    await publish(pub, `${tag}/to-0`, 'from shard 1', { qos: 1 });
    assert.equal(
      (await waitForMessage(freshInbox, (m) => m.topic === `${tag}/to-0`)).payload,
      'from shard 1',
    );
    await publish(fresh, `${tag}/shared`, 'from shard 0', { qos: 1 });
    await waitForMessage(aliveInbox, (m) => m.payload === 'from shard 0');
    // The old client id reconnects too (its clean session died with the shard).
    const again = await client(t, broker, { clientId: idOnShard(broker, 0, `${tag}-dead`) });
    const againInbox = new Inbox(again);
    await subscribe(again, `${tag}/only-dead`, 0);
    await publish(pub, `${tag}/only-dead`, 'back', { qos: 1 });
    assert.equal((await waitForMessage(againInbox, () => true)).payload, 'back');
    assert.deepEqual(
      aliveInbox.messages.map((m) => m.payload),
      ['before', 'during', 'from shard 0'],
    );
  });
}

test('past node.shard_restart_intensity restarts the supervisor gives up: fatal, no more restarts', {
  timeout: T,
}, async (t) => {
  const fatal: string[] = [];
  const b = await startBrokerWith(t, {
    config: { 'node.shard_restart_intensity': 2, 'node.shard_restart_period': 60 },
    // In-process, the default (stop, then exit 1) would end the test run; cli.test.ts covers it.
    onFatal: (reason) => fatal.push(reason),
  });
  const shard0 = b.supervisor.shards[0];
  let fatalEvents = 0;
  b.supervisor.on('fatal', () => fatalEvents++);

  // Two restarts are within the intensity.
  for (let i = 1; i <= 2; i++) {
    const generation = shard0.generation;
    b.supervisor.post(0, { t: 'crash' });
    await restarted(b, 0, generation + 1);
    assert.equal(b.counters.snapshot().shardRestarts, i);
    assert.deepEqual(fatal, []);
    // ... and the restarted shard serves clients.
    await client(t, b, { clientId: idOnShard(b, 0, `intensity-${i}`) });
  }

  // The third crash within the period exceeds it.
  const generation = shard0.generation;
  b.supervisor.post(0, { t: 'crash' });
  await waitFor(() => fatal.length > 0, 'the fatal hook');
  assert.equal(fatalEvents, 1);
  assert.match(fatal[0], /3 shard restarts within 60s/);
  assert.equal(b.counters.snapshot().shardRestarts, 3);
  // Given up: shard 0 is not restarted. Shard 1 still runs until the owner stops the broker.
  assert.equal(shard0.worker, null);
  assert.equal(shard0.generation, generation);
  const alive = await client(t, b, { clientId: idOnShard(b, 1, 'intensity-alive') });
  const inbox = new Inbox(alive);
  await subscribe(alive, 'intensity/x', 1);
  await publish(alive, 'intensity/x', 'still here', { qos: 1 });
  await inbox.wait(1);
  assert.equal(shard0.generation, generation, 'no restart was scheduled after giving up');
  assert.equal(shard0.worker, null);
});

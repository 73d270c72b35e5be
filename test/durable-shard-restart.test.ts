/**
 * A shard that crashes and restarts with the durable store on (docs/DURABILITY.md, "A shard that
 * dies keeps its bits in the topic index"): messages published while it is down, and those its
 * peers had posted to it before its restore, reach the sessions and shared groups it owns.
 * Real broker (its own threads, `Broker.start` in this process to reach its supervisor), real
 * TCP clients (mqtt.js), ephemeral ports; the crash is the shard's test hook (`crash`: an
 * uncaught exception in the shard thread, as a bug would throw).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { ownerShard } from '../src/routing/shared.js';
import { hookFixture } from './helpers/auth.js';
import {
  type Ctx,
  client,
  clientWithInbox,
  endClient,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  waitFor,
} from './helpers/broker.js';

const T = 90_000;

/** A group name whose owner shard for `filter` is `owner` among `shards`. */
function groupOwnedBy(owner: number, filter: string, shards: number, prefix: string): string {
  for (let i = 0; ; i++) {
    const g = `${prefix}${i}`;
    if (ownerShard(g, filter, shards) === owner) return g;
  }
}

/** Crashes shard `k` and resolves once main has seen its thread exit (the restart is due later). */
async function crash(broker: Broker, k: number): Promise<number> {
  const shard = broker.supervisor.shards[k];
  const generation = shard.generation;
  const restarts = broker.counters.snapshot().shardRestarts;
  broker.supervisor.post(k, { t: 'crash' });
  await waitFor(() => broker.counters.snapshot().shardRestarts === restarts + 1, `shard ${k} down`);
  return generation;
}

/**
 * QoS 1 messages published one after the other while shard `k` is down (main counts its restart
 * when the thread exits; the new thread says ready only after its restore): at least `min`, and
 * as many as are acked before it is ready, at most `max`. Returns them and how many were acked
 * while it was down.
 */
async function publishWhileDown(
  broker: Broker,
  k: number,
  pub: MqttClient,
  topic: string,
  prefix: string,
  min: number,
  max: number,
): Promise<{ sent: string[]; whileDown: number }> {
  const shard = broker.supervisor.shards[k];
  const sent: string[] = [];
  let whileDown = 0;
  for (let i = 0; i < max && (i < min || !shard.ready); i++) {
    const payload = `${prefix}${i}`;
    const down = !shard.ready;
    await publish(pub, topic, payload, { qos: 1 });
    sent.push(payload);
    if (down && !shard.ready) whileDown++;
  }
  return { sent, whileDown };
}

for (const form of ['$share/{g}/', '$queue/'] as const) {
  test(`the owner shard of a shared group (${form}…) crashes: QoS 1 messages acked while it is down reach the group after its restart, each once`, {
    timeout: T,
  }, async (t) => {
    const SHARDS = 3;
    const broker = await startBroker(t, { 'node.shards': SHARDS, 'durability.mode': 'sync' });
    const K = 1;
    // EMQX's $queue/{filter} is group '$queue': a filter that shard K owns.
    let F = 'ds/x';
    for (let i = 0; form === '$queue/' && ownerShard('$queue', F, SHARDS) !== K; i++) F = `dq/x${i}`;
    const filter = form === '$queue/' ? `$queue/${F}` : `$share/${groupOwnedBy(K, F, SHARDS, 'dsg')}/${F}`;
    // Persistent members on the two shards that stay up; the publisher on one of them.
    const members: { c: MqttClient; inbox: Inbox }[] = [];
    for (const shard of [0, 2]) {
      const c = await client(t, broker, {
        clientId: idOnShard(broker, shard, `dsm-${form.length}`),
        clean: false,
      });
      const inbox = new Inbox(c);
      assert.deepEqual(await subscribe(c, filter, 1), [1]);
      members.push({ c, inbox });
    }
    const pub = await client(t, broker, { clientId: idOnShard(broker, 0, `dsp-${form.length}`) });
    const received = () => members.flatMap((m) => m.inbox.messages.map((x) => x.payload));
    await publish(pub, F, 'before', { qos: 1 });
    await waitFor(() => received().includes('before'), 'a message through the group before the crash');

    const generation = await crash(broker, K);
    const { sent, whileDown } = await publishWhileDown(broker, K, pub, F, 'down', 5, 400);
    t.diagnostic(`${whileDown} of ${sent.length} acked while shard ${K} was down`);
    assert.ok(whileDown > 0, 'some messages were acked while the owner was down');
    const s = broker.supervisor.shards[K];
    await waitFor(() => s.generation > generation && s.ready, `shard ${K} restarted`);
    // And after the restart, through the rejoined group.
    await publish(pub, F, 'after', { qos: 1 });
    const all = ['before', ...sent, 'after'];
    const missing = () => all.filter((p) => !received().includes(p));
    await waitFor(() => missing().length === 0, 'every acked message delivered').catch(() => {});
    assert.deepEqual(missing(), [], 'every acked message delivered to the group');
    // 'before' may come twice: the owner can die after routing it but before its confirmation
    // reached the publisher's shard, whose outbox then replays it (at least once, [MQTT-4.3.2-1]).
    // What was published while it was down must come exactly once.
    const got = received().filter((p) => all.includes(p) && p !== 'before');
    const twice = got.filter((p, i) => got.indexOf(p) !== i);
    assert.deepEqual(twice, [], 'each once (the restarted owner took each outbox batch once)');
  });
}

/**
 * The test's side of test/fixtures/hooks/start-gate.mjs: every shard's start-up goes at once,
 * except a restart of the shard `hold(k)` names, which waits for `release()`.
 */
class StartGate {
  private readonly channel = new BroadcastChannel('emqx-ts-test-start-gate');
  private held = -1;
  private waiting = false;
  private onLoading: (() => void) | null = null;

  constructor(t: Ctx) {
    this.channel.onmessage = (e: MessageEvent) => {
      const k = (e.data as { loading?: number }).loading;
      if (k === undefined) return;
      if (k !== this.held) this.channel.postMessage({ go: k });
      else {
        this.waiting = true;
        this.onLoading?.();
      }
    };
    t.after(() => {
      this.release();
      this.channel.close();
    });
  }

  /** The next start-up of shard `k` waits in its hook loading until release(). */
  hold(k: number): void {
    this.held = k;
  }

  /** Resolves once the held shard's new thread is waiting (constructed, not started). */
  loading(): Promise<void> {
    if (this.waiting) return Promise.resolve();
    return new Promise((resolve) => {
      this.onLoading = resolve;
    });
  }

  release(): void {
    if (this.held < 0) return;
    const k = this.held;
    this.held = -1;
    if (this.waiting) this.channel.postMessage({ go: k });
    this.waiting = false;
  }
}

test("a restarted shard reads its peers' batches only after restoring its sessions: what they sent it while it was down and while it was starting reaches its persistent session", {
  timeout: T,
}, async (t) => {
  const gate = new StartGate(t);
  const broker = await startBroker(t, {
    'durability.mode': 'sync',
    'hooks.modules': hookFixture('start-gate.mjs'),
  });
  const K = 1;
  const subId = idOnShard(broker, K, 'rr-sub');
  {
    const c = await client(t, broker, { clientId: subId, clean: false });
    assert.deepEqual(await subscribe(c, 'rr/#', 1), [1]);
    await endClient(c);
  }
  const pub = await client(t, broker, { clientId: idOnShard(broker, 0, 'rr-pub') });
  gate.hold(K);
  await crash(broker, K);
  // Down: shard 0 keeps them in its outbox (its port to K is gone) and re-sends them to the restart.
  const sent: string[] = [];
  for (let i = 0; i < 10; i++) {
    await publish(pub, 'rr/a', `down${i}`, { qos: 1 });
    sent.push(`down${i}`);
  }
  // The new thread is constructed and still loading: main has given shard 0 its new port, so
  // these and the outbox replay wait in that port, ahead of the restore.
  await gate.loading();
  for (let i = 0; i < 10; i++) {
    await publish(pub, 'rr/a', `starting${i}`, { qos: 1 });
    sent.push(`starting${i}`);
  }
  const s = broker.supervisor.shards[K];
  assert.equal(s.ready, false, 'published while the restarted shard was still starting');
  gate.release();
  await waitFor(() => s.ready, `shard ${K} ready`);
  const { c, inbox, sessionPresent } = await clientWithInbox(t, broker, { clientId: subId, clean: false });
  assert.equal(sessionPresent, true, 'its session restored [MQTT-3.2.2-2]');
  const missing = () => sent.filter((p) => !inbox.messages.some((m) => m.payload === p));
  await waitFor(() => missing().length === 0, 'every acked message delivered').catch(() => {});
  assert.deepEqual(missing(), [], 'every message acked to the publisher reaches the restored session');
  await endClient(c);
});

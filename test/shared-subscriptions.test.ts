/**
 * Shared subscriptions ($share/{group}/{filter}, EMQX's $queue/{filter}) on a real 4-shard broker
 * over real TCP. A group's owner shard (routing/shared.ts: hash(group, filter) % N) picks one
 * member per message; members, owners and publishers are placed on chosen shards (idOnShard,
 * group names chosen by their owner) so that every cross-shard path is exercised.
 *
 * Exactly-once is checked with fences that travel the same FIFO paths as the group's messages:
 * - round robin: one more message per member through the group: a member that has its fence has
 *   everything the owner sent it before;
 * - other strategies: the publisher sits on the owner shard and the fence is a plain
 *   subscription's message, which that shard appends to the same per-peer batch as the group's.
 * Cited: OASIS MQTT Version 5.0, normative statements [MQTT-x.x.x-y]; §4.8.2 Shared Subscriptions.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { ownerShard } from '../src/routing/shared.js';
import { MatchResult } from '../src/routing/topic-index.js';
import {
  client5,
  clientWithInbox,
  endClient,
  idOnShard,
  PacketClient,
  PacketClient5,
  type PacketInbox,
  publish5,
  publishFrame5,
  rawConnect5,
  readFrame,
  reconfigureShards,
  startBroker,
  subscribe5,
  waitFor,
  within,
} from './helpers/broker.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;
const SHARDS = 4;
let broker: Broker;
before(async () => {
  broker = await startBroker({ after: () => {} }, { 'node.shards': SHARDS });
});
after(() => broker?.stop());
// Each test starts with the previous one's connections closed on the broker side too, so that
// the gauges it reads (subscriptionsShared) move only with what it does itself.
// A query to every shard is the barrier: each has finished handling those closes (gauges included).
beforeEach(async () => {
  await waitFor(() => broker.counters.snapshot().connections === 0, 'previous connections closed');
  await broker.queries.askAll({ q: 'topics' });
});

type Ctx = Parameters<typeof client5>[0];

interface Member {
  id: string;
  c: MqttClient;
  inbox: PacketInbox;
}

let seq = 0;
/** An mqtt.js MQTT 5 client on `shard`. */
async function member(
  t: Ctx,
  shard: number,
  prefix: string,
  opts: Record<string, unknown> = {},
): Promise<Member> {
  const id = idOnShard(broker, shard, `${prefix}-${seq++}`);
  const { c, inbox } = await client5(t, broker, { clientId: id, ...opts });
  return { id, c, inbox };
}

/** A group name whose owner shard for `filter` is `owner`. */
function groupOwnedBy(owner: number, filter: string, prefix: string): string {
  for (let i = 0; ; i++) {
    const g = `${prefix}${i}`;
    if (ownerShard(g, filter, SHARDS) === owner) return g;
  }
}

/** Payloads a member received on topics under `prefix`. */
function got(m: Member, prefix: string): string[] {
  return m.inbox.packets.filter((p) => p.topic.startsWith(prefix)).map((p) => p.payload.toString());
}

const sharedGauge = (): number => broker.counters.snapshot().subscriptionsShared;
const waitGauge = (n: number): Promise<void> =>
  waitFor(() => sharedGauge() === n, `subscriptionsShared = ${n} (is ${sharedGauge()})`);

/** Publishes `payloads` in order at QoS 1 on `topic(i)`. */
async function publishAll(pub: MqttClient, payloads: string[], topic: (i: number) => string): Promise<void> {
  for (let i = 0; i < payloads.length; i++) await publish5(pub, topic(i), payloads[i], { qos: 1 });
}

/**
 * Round-robin fence: `perGroup` more messages on `topic`, then waits until each group received
 * all of them and each member at least one (so it has everything its owner sent it before).
 */
async function rrFence(pub: MqttClient, topic: string, groups: Member[][], perGroup: number): Promise<void> {
  for (let i = 0; i < perGroup; i++) await publish5(pub, topic, `fence-${i}`, { qos: 1 });
  const fences = (m: Member) => m.inbox.packets.filter((p) => p.topic === topic).length;
  await waitFor(
    () =>
      groups.every((g) => g.reduce((s, m) => s + fences(m), 0) === perGroup && g.every((m) => fences(m) > 0)),
    `fences on ${topic}`,
  );
  for (const m of groups.flat())
    m.inbox.packets.splice(0, m.inbox.packets.length, ...m.inbox.packets.filter((p) => p.topic !== topic));
}

/** Plain-subscription fence from a publisher on the group's owner shard (see the file comment). */
async function plainFence(pub: MqttClient, topic: string, members: Member[]): Promise<void> {
  const payload = `fence-${seq++}`;
  await publish5(pub, topic, payload, { qos: 1 });
  await waitFor(
    () =>
      members.every((m) =>
        m.inbox.packets.some((p) => p.topic === topic && p.payload.toString() === payload),
      ),
    `fence ${topic}`,
  );
}

const range = (n: number, p: string): string[] => Array.from({ length: n }, (_, i) => `${p}${i}`);
const sorted = (a: string[]): string[] => [...a].sort();

test('round robin: 3 members on 3 shards, each message to exactly one; a second group and a plain subscriber get every message [MQTT-4.8.2-3]', {
  timeout: T,
}, async (t) => {
  const F = 'sh/rr/#';
  const g = groupOwnedBy(0, F, 'rr');
  const g2 = groupOwnedBy(1, F, 'rrb');
  const base = sharedGauge();
  const m = [await member(t, 1, 'rr-m'), await member(t, 2, 'rr-m'), await member(t, 3, 'rr-m')];
  const k = [await member(t, 0, 'rr-k'), await member(t, 2, 'rr-k')];
  const plain = await member(t, 3, 'rr-plain');
  for (const x of m) assert.deepEqual(await subscribe5(x.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
  for (const x of k) assert.deepEqual(await subscribe5(x.c, `$share/${g2}/${F}`, { qos: 2 }), [2]);
  assert.deepEqual(await subscribe5(plain.c, F, { qos: 1 }), [1]);
  await waitGauge(base + 5);
  const pub = await member(t, 2, 'rr-pub');

  const N = 30;
  const all = range(N, 'm');
  await publishAll(pub.c, all, (i) => (i % 2 ? 'sh/rr/a' : 'sh/rr/b/c'));
  await rrFence(pub.c, 'sh/rr/fence', [m, k, [plain]], 3);
  // Group 1: every message exactly once, round robin = exactly N/3 each; delivered at QoS
  // min(published, granted) [MQTT-4.8.2-3].
  assert.deepEqual(sorted(m.flatMap((x) => got(x, 'sh/rr/'))), sorted(all));
  assert.deepEqual(
    m.map((x) => got(x, 'sh/rr/').length),
    [10, 10, 10],
  );
  assert.ok(m.every((x) => x.inbox.packets.every((p) => p.qos === 1)));
  // Group 2 (another owner shard) independently: every message once, N/2 each.
  assert.deepEqual(sorted(k.flatMap((x) => got(x, 'sh/rr/'))), sorted(all));
  assert.deepEqual(
    k.map((x) => got(x, 'sh/rr/').length),
    [15, 15],
  );
  // The plain subscriber: all of them, in publish order [MQTT-4.6.0-6].
  assert.deepEqual(got(plain, 'sh/rr/'), all);

  // A member that disconnects leaves: the next messages go to the two others only.
  await endClient(m[2].c);
  await waitGauge(base + 4);
  const more = range(6, 'n');
  await publishAll(pub.c, more, () => 'sh/rr/a');
  await rrFence(pub.c, 'sh/rr/fence', [m.slice(0, 2), k], 2);
  assert.deepEqual(
    sorted(m.slice(0, 2).flatMap((x) => got(x, 'sh/rr/a').filter((p) => p.startsWith('n')))),
    sorted(more),
  );
  assert.deepEqual(got(m[2], 'sh/rr/').length, 10, 'nothing more for the member that left');

  // UNSUBSCRIBE: UNSUBACK 0x00 and no more messages for it [MQTT-3.10.4-2].
  await within(
    new Promise<void>((resolve, reject) =>
      m[1].c.unsubscribe(`$share/${g}/${F}`, (err, packet) => {
        if (err) reject(err);
        else {
          assert.deepEqual((packet as { granted?: number[] } | undefined)?.granted, [0]);
          resolve();
        }
      }),
    ),
    'UNSUBACK',
  );
  await waitGauge(base + 3);
  const last = range(3, 'u');
  await publishAll(pub.c, last, () => 'sh/rr/a');
  await rrFence(pub.c, 'sh/rr/fence', [[m[0]], k], 2);
  assert.deepEqual(
    got(m[0], 'sh/rr/a').filter((p) => p.startsWith('u')),
    last,
  );
  assert.deepEqual(
    got(m[1], 'sh/rr/a').filter((p) => p.startsWith('u')),
    [],
  );
});

test('$queue/{filter} is a shared subscription of group $queue (EMQX)', { timeout: T }, async (t) => {
  const q = [await member(t, 1, 'q'), await member(t, 3, 'q')];
  for (const x of q) assert.deepEqual(await subscribe5(x.c, '$queue/sh/q/#', { qos: 0 }), [0]);
  const pub = await member(t, 2, 'q-pub');
  const all = range(6, 'q');
  await publishAll(pub.c, all, () => 'sh/q/m');
  await rrFence(pub.c, 'sh/q/fence', [q], 2);
  assert.deepEqual(sorted(q.flatMap((x) => got(x, 'sh/q/m'))), sorted(all));
  assert.deepEqual(
    q.map((x) => got(x, 'sh/q/m').length),
    [3, 3],
  );
  assert.ok(
    q.every((x) => x.inbox.packets.every((p) => p.qos === 0)),
    'granted QoS 0 [MQTT-4.8.2-3]',
  );
});

/** Three members of a group owned by shard 0 on shards 1-3, subscribed to a plain fence too. */
async function strategyGroup(t: Ctx, F: string, prefix: string): Promise<{ g: string; ms: Member[] }> {
  const g = groupOwnedBy(0, F, prefix);
  const ms = [await member(t, 1, prefix), await member(t, 2, prefix), await member(t, 3, prefix)];
  for (const x of ms) {
    assert.deepEqual(await subscribe5(x.c, `fence/${prefix}`, { qos: 1 }), [1]);
    assert.deepEqual(await subscribe5(x.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
  }
  return { g, ms };
}

async function strategy(t: Ctx, s: string): Promise<void> {
  await reconfigureShards(broker, { 'mqtt.shared_subscription_strategy': s });
  t.after(() => reconfigureShards(broker, { 'mqtt.shared_subscription_strategy': 'round_robin' }));
}

test('sticky: every message to one member until it leaves, then to one other', { timeout: T }, async (t) => {
  await strategy(t, 'sticky');
  const pub = await member(t, 0, 'st-pub');
  // Three groups (owned by the publisher's shard), each with three members on shards 1-3.
  const groups = await Promise.all(
    [0, 1, 2].map(async (n) => {
      const F = `sh/st/${n}`;
      const g = groupOwnedBy(0, F, 'st');
      const ms = [await member(t, 1, 'st'), await member(t, 2, 'st'), await member(t, 3, 'st')];
      for (const x of ms) assert.deepEqual(await subscribe5(x.c, 'fence/st', { qos: 1 }), [1]);
      return { F, g, ms };
    }),
  );
  for (const { F, g, ms } of groups) {
    // The first member alone gets the first message and stays the one when others join...
    assert.deepEqual(await subscribe5(ms[0].c, `$share/${g}/${F}`, { qos: 1 }), [1]);
    await publish5(pub.c, F, 'first', { qos: 1 });
    await ms[0].inbox.wait(1);
    for (const x of ms.slice(1)) assert.deepEqual(await subscribe5(x.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
    await publishAll(pub.c, range(4, 's'), () => F);
    // ...and when it subscribes again (the subscription is replaced, the membership kept).
    assert.deepEqual(await subscribe5(ms[0].c, `$share/${g}/${F}`, { qos: 1 }), [1]);
    await publishAll(pub.c, range(4, 'r'), () => F);
  }
  await plainFence(
    pub.c,
    'fence/st',
    groups.flatMap((x) => x.ms),
  );
  for (const { F, ms } of groups) {
    assert.deepEqual(
      ms.map((x) => got(x, F)),
      [['first', ...range(4, 's'), ...range(4, 'r')], [], []],
      F,
    );
  }
  // It leaves: one of the others gets all of the next ones.
  const { F, ms } = groups[0];
  const base = sharedGauge();
  await endClient(ms[0].c);
  await waitGauge(base - 1);
  const next = range(6, 'x');
  await publishAll(pub.c, next, () => F);
  await plainFence(pub.c, 'fence/st', ms.slice(1));
  const counts = ms.slice(1).map((x) => got(x, F));
  assert.ok(
    (counts[0].length === 6 && counts[1].length === 0) || (counts[0].length === 0 && counts[1].length === 6),
    JSON.stringify(counts),
  );
  assert.deepEqual(counts.flat(), next);
});

test('hash_clientid: the same publisher always reaches the same member', { timeout: T }, async (t) => {
  await strategy(t, 'hash_clientid');
  const F = 'sh/hc';
  const { ms } = await strategyGroup(t, F, 'hc');
  const pubs = [
    await member(t, 0, 'hc-p'),
    await member(t, 0, 'hc-p'),
    await member(t, 0, 'hc-p'),
    await member(t, 0, 'hc-p'),
  ];
  for (let i = 0; i < 4; i++)
    for (const [j, p] of pubs.entries()) await publish5(p.c, F, `${p.id}#${i}-${j}`, { qos: 1 });
  await plainFence(pubs[0].c, 'fence/hc', ms);
  const received = ms.flatMap((x) => got(x, F));
  assert.equal(received.length, 16);
  assert.equal(new Set(received).size, 16, 'each exactly once');
  for (const p of pubs) {
    const holders = ms.filter((x) => got(x, F).some((s) => s.startsWith(`${p.id}#`)));
    assert.equal(holders.length, 1, `${p.id}'s messages went to ${holders.map((h) => h.id)}`);
    assert.equal(got(holders[0], F).filter((s) => s.startsWith(`${p.id}#`)).length, 4);
  }
});

test('hash_topic: the same topic always reaches the same member', { timeout: T }, async (t) => {
  await strategy(t, 'hash_topic');
  const F = 'sh/ht/+';
  const { ms } = await strategyGroup(t, F, 'ht');
  const pub = await member(t, 0, 'ht-pub');
  const topics = range(6, 'sh/ht/t');
  for (let i = 0; i < 3; i++) for (const tp of topics) await publish5(pub.c, tp, `${tp}#${i}`, { qos: 1 });
  await plainFence(pub.c, 'fence/ht', ms);
  const all = ms.flatMap((x) => got(x, 'sh/ht/'));
  assert.deepEqual(sorted(all), sorted(topics.flatMap((tp) => [0, 1, 2].map((i) => `${tp}#${i}`))));
  for (const tp of topics) {
    const holders = ms.filter((x) => x.inbox.packets.some((p) => p.topic === tp));
    assert.equal(holders.length, 1, `${tp} went to ${holders.map((h) => h.id)}`);
  }
});

test('random: each message to exactly one member', { timeout: T }, async (t) => {
  await strategy(t, 'random');
  const F = 'sh/rnd';
  const { ms } = await strategyGroup(t, F, 'rnd');
  const pub = await member(t, 0, 'rnd-pub');
  const all = range(30, 'r');
  await publishAll(pub.c, all, () => F);
  await plainFence(pub.c, 'fence/rnd', ms);
  assert.deepEqual(sorted(ms.flatMap((x) => got(x, F))), sorted(all));
});

test('a leaving member: unacknowledged QoS 1 go to another member; QoS 2 and refused ones do not [MQTT-4.8.2-5] [MQTT-4.8.2-6]', {
  timeout: T,
}, async (t) => {
  const F = 'sh/rd';
  const g = groupOwnedBy(0, F, 'rd');
  const pub = await member(t, 0, 'rd-pub');
  const m = await member(t, 1, 'rd-m');
  assert.deepEqual(await subscribe5(m.c, 'fence/rd', { qos: 1 }), [1]);
  const base = sharedGauge();
  // R (raw, never acknowledges) on the owner shard joins first, then M on shard 1.
  const { pc: r } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'rd-raw1'));
  assert.deepEqual((await r.subscribe([{ topic: `$share/${g}/${F}`, qos: 1 }])).granted, [1]);
  assert.deepEqual(await subscribe5(m.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
  await waitGauge(base + 2);

  const all = range(4, 'a');
  await publishAll(pub.c, all, () => F);
  const toR = [await r.expect('publish'), await r.expect('publish')].map((p) => p.payload.toString());
  await m.inbox.wait(2);
  assert.deepEqual(sorted([...toR, ...got(m, F)]), all, 'round robin: 2 and 2');
  // R closes without acknowledging: its two go to M (the session ended with the connection).
  await r.destroy();
  await waitGauge(base + 1);
  await m.inbox.wait(4);
  await plainFence(pub.c, 'fence/rd', [m]);
  assert.deepEqual(sorted(got(m, F)), all, 'all four at M, each once');
  assert.ok(m.inbox.packets.every((p) => p.qos === 1));

  // QoS 2: R2 gets one and never sends PUBREC; it must not go to another member when R2's
  // session ends [MQTT-4.8.2-5].
  const { pc: r2 } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'rd-raw2'));
  assert.deepEqual((await r2.subscribe([{ topic: `$share/${g}/${F}`, qos: 2 }])).granted, [2]);
  await waitGauge(base + 2);
  const before2 = got(m, F).length;
  await publish5(pub.c, F, 'q2-a', { qos: 2 });
  await publish5(pub.c, F, 'q2-b', { qos: 2 });
  const p2 = await r2.expect('publish');
  assert.equal(p2.qos, 2);
  const toR2 = p2.payload.toString();
  await m.inbox.wait(before2 + 1);
  await r2.destroy();
  await waitGauge(base + 1);
  await plainFence(pub.c, 'fence/rd', [m]);
  assert.deepEqual(
    got(m, F).slice(before2),
    [toR2 === 'q2-a' ? 'q2-b' : 'q2-a'],
    `${toR2} was in flight at QoS 2 to the member that left: not sent to another [MQTT-4.8.2-5]`,
  );

  // PUBACK with a failure reason code: discarded, not sent to another member [MQTT-4.8.2-6].
  const { pc: r3 } = await PacketClient5.connect(t, broker, idOnShard(broker, 0, 'rd-raw3'));
  assert.deepEqual((await r3.subscribe([{ topic: `$share/${g}/${F}`, qos: 1 }])).granted, [1]);
  await waitGauge(base + 2);
  const before3 = got(m, F).length;
  await publish5(pub.c, F, 'rc-a', { qos: 1 });
  await publish5(pub.c, F, 'rc-b', { qos: 1 });
  const p3 = await r3.expect('publish');
  r3.send({ cmd: 'puback', messageId: p3.messageId!, reasonCode: 0x80 });
  await r3.ping();
  await m.inbox.wait(before3 + 1);
  await r3.destroy();
  await waitGauge(base + 1);
  await plainFence(pub.c, 'fence/rd', [m]);
  assert.deepEqual(got(m, F).slice(before3), [p3.payload.toString() === 'rc-a' ? 'rc-b' : 'rc-a']);
});

test('QoS 2 in flight to a persistent member that drops: completed to it when it resumes, not sent to another [MQTT-4.8.2-4]', {
  timeout: T,
}, async (t) => {
  const F = 'sh/q2p';
  const g = groupOwnedBy(0, F, 'q2p');
  const pub = await member(t, 0, 'q2p-pub');
  const m = await member(t, 2, 'q2p-m');
  assert.deepEqual(await subscribe5(m.c, 'fence/q2p', { qos: 1 }), [1]);
  const pid = idOnShard(broker, 1, 'q2p-persistent');
  const persistent = { clean: false, properties: { sessionExpiryInterval: 60 } };
  const { pc: p } = await PacketClient5.connect(t, broker, pid, persistent);
  assert.deepEqual((await p.subscribe([{ topic: `$share/${g}/${F}`, qos: 2 }])).granted, [2]);
  assert.deepEqual(await subscribe5(m.c, `$share/${g}/${F}`, { qos: 2 }), [2]);
  await publish5(pub.c, F, 'one', { qos: 2 });
  await publish5(pub.c, F, 'two', { qos: 2 });
  const first = await p.expect('publish');
  await m.inbox.wait(1);
  await p.destroy();
  await plainFence(pub.c, 'fence/q2p', [m]);
  const other = first.payload.toString() === 'one' ? 'two' : 'one';
  assert.deepEqual(got(m, F), [other], 'the in-flight QoS 2 message stays with its member');
  // Resumed: the PUBLISH again, same packet id, DUP 1 [MQTT-4.4.0-1] [MQTT-3.3.1-1].
  const { pc: back, connack } = await PacketClient5.connect(t, broker, pid, persistent);
  assert.equal(connack.sessionPresent, true);
  const again = await back.expect('publish');
  assert.deepEqual(
    [again.payload.toString(), again.qos, again.dup, again.messageId],
    [first.payload.toString(), 2, true, first.messageId],
  );
  back.send({ cmd: 'pubrec', messageId: again.messageId! });
  assert.equal((await back.expect('pubrel')).messageId, again.messageId);
  back.send({ cmd: 'pubcomp', messageId: again.messageId! });
  // End the session (expiry 0 at DISCONNECT is allowed) so that it leaves no member behind.
  back.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 0 } });
  await back.waitClosed();
});

test('a persistent member that reconnects rejoins its groups', { timeout: T }, async (t) => {
  const F = 'sh/ps';
  const g = groupOwnedBy(1, F, 'ps');
  const sid = idOnShard(broker, 2, 'ps-persistent');
  const persistent = { clientId: sid, clean: false, properties: { sessionExpiryInterval: 300 } };
  const s = await client5(t, broker, persistent);
  const o = await member(t, 3, 'ps-o');
  const pub = await member(t, 0, 'ps-pub');
  for (const x of [s.c, o.c]) assert.deepEqual(await subscribe5(x, `$share/${g}/${F}`, { qos: 1 }), [1]);
  await endClient(s.c);
  // While it is offline every message goes to the other member.
  const offline = range(4, 'off');
  await publishAll(pub.c, offline, () => F);
  await o.inbox.wait(4);
  assert.deepEqual(sorted(o.inbox.packets.map((p) => p.payload.toString())), offline);
  // Back with its session (no new SUBSCRIBE): it is a member again.
  const back = await client5(t, broker, persistent);
  assert.equal(back.connack.sessionPresent, true);
  const live: string[] = [];
  for (let i = 0; i < 10 && !back.inbox.packets.some((p) => p.topic === F); i++) {
    const payload = `on${i}`;
    live.push(payload);
    await publish5(pub.c, F, payload, { qos: 1 });
    await waitFor(
      () => [back, o].some((x) => x.inbox.packets.some((p) => p.payload.toString() === payload)),
      `${payload} delivered`,
    );
  }
  const atBack = back.inbox.packets.map((p) => p.payload.toString());
  assert.ok(atBack.length > 0, 'the reconnected member receives again');
  assert.ok(
    atBack.every((p) => p.startsWith('on')),
    'nothing of what was published while it was away',
  );
  assert.deepEqual(
    sorted([...atBack, ...o.inbox.packets.map((p) => p.payload.toString())]),
    sorted([...offline, ...live]),
  );
});

test('retained messages are not sent on a shared subscription (§4.8.2); Retain As Published and Subscription Identifiers apply to it [MQTT-3.3.1-13] [MQTT-3.3.4-3]', {
  timeout: T,
}, async (t) => {
  const pub = await member(t, 0, 'ret-pub');
  await publish5(pub.c, 'sh/ret/t', 'stored', { qos: 1, retain: true });
  const { pc: keep } = await PacketClient5.connect(t, broker, idOnShard(broker, 1, 'ret-rap1'));
  const { pc: clear } = await PacketClient5.connect(t, broker, idOnShard(broker, 2, 'ret-rap0'));
  const a = await keep.subscribe([{ topic: '$share/ga/sh/ret/+', qos: 1, rap: true, rh: 0 }], 1, 77);
  const b = await clear.subscribe([{ topic: '$share/gb/sh/ret/+', qos: 1, rap: false, rh: 0 }]);
  assert.deepEqual([a.granted, b.granted], [[1], [1]]);
  assert.deepEqual(await keep.ping(), [], 'no retained message after a shared SUBACK (Retain Handling 0)');
  assert.deepEqual(await clear.ping(), []);
  // A plain subscription to the same filter does get it (the message is there).
  const plain = await member(t, 3, 'ret-plain');
  assert.deepEqual(await subscribe5(plain.c, 'sh/ret/+', { qos: 1 }), [1]);
  const [stored] = await plain.inbox.wait(1);
  assert.deepEqual([stored.payload.toString(), stored.retain], ['stored', true]);

  await publish5(pub.c, 'sh/ret/t', 'live', { qos: 1, retain: true });
  const pa = await keep.expect('publish');
  const pb = await clear.expect('publish');
  assert.deepEqual([pa.payload.toString(), pa.retain], ['live', true], 'RAP 1: RETAIN as published');
  assert.deepEqual([pb.payload.toString(), pb.retain], ['live', false], 'RAP 0: RETAIN 0');
  // The member's Subscription Identifier comes with what its group sends it [MQTT-3.3.4-3].
  assert.deepEqual(
    [pa.properties?.subscriptionIdentifier, pb.properties?.subscriptionIdentifier],
    [77, undefined],
  );
});

test('an MQTT 3.1.1 client can be a member of a shared group', { timeout: T }, async (t) => {
  const F = 'sh/v3';
  const g = groupOwnedBy(2, F, 'v3');
  const v3 = await clientWithInbox(t, broker, { clientId: idOnShard(broker, 1, 'v3-member') });
  const granted = await within(
    new Promise<number[]>((resolve, reject) =>
      v3.c.subscribe(`$share/${g}/${F}`, { qos: 1 }, (err, gr) =>
        err ? reject(err) : resolve((gr ?? []).map((x) => x.qos)),
      ),
    ),
    'v3 SUBACK',
  );
  assert.deepEqual(granted, [1]);
  const v5 = await member(t, 3, 'v3-v5');
  assert.deepEqual(await subscribe5(v5.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
  const pub = await member(t, 0, 'v3-pub');
  const all = range(4, 'v');
  await publishAll(pub.c, all, () => F);
  await publish5(pub.c, F, 'fence-a', { qos: 1 });
  await publish5(pub.c, F, 'fence-b', { qos: 1 });
  const at3 = (await v3.inbox.wait(3)).map((m) => m.payload);
  const at5 = (await v5.inbox.wait(3)).map((p) => p.payload.toString());
  assert.deepEqual(sorted([...at3, ...at5]), sorted([...all, 'fence-a', 'fence-b']));
  assert.deepEqual([at3.length, at5.length], [3, 3], 'round robin');
  assert.ok(v3.inbox.messages.every((m) => m.qos === 1 && !m.retain));
});

test('invalid share names are refused: 0x80 (3.1.1), 0x8F (5) [MQTT-4.8.2-1] [MQTT-4.8.2-2]', {
  timeout: T,
}, async (t) => {
  const filters = [
    '$share/g+/t',
    '$share//t',
    '$share/g',
    '$share/g/',
    '$share/#/t',
    '$share/g/t/#/x',
    '$queue/',
    '$share/ok/t',
  ];
  const { pc: v3 } = await PacketClient.connect(t, broker, idOnShard(broker, 1, 'inv-v3'));
  v3.send({ cmd: 'subscribe', messageId: 1, subscriptions: filters.map((topic) => ({ topic, qos: 1 })) });
  assert.deepEqual((await v3.expect('suback')).granted, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 1]);
  const { pc: v5 } = await PacketClient5.connect(t, broker, idOnShard(broker, 2, 'inv-v5'));
  const ack = await v5.subscribe(filters.map((topic) => ({ topic, qos: 1 as const })));
  assert.deepEqual(ack.granted, [0x8f, 0x8f, 0x8f, 0x8f, 0x8f, 0x8f, 0x8f, 1]);
});

test('No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82 [MQTT-3.8.3-4]', {
  timeout: T,
}, async (t) => {
  const base = sharedGauge();
  for (const topic of ['$share/g/sh/nl', '$queue/sh/nl']) {
    const { pc } = await PacketClient5.connect(t, broker, idOnShard(broker, 3, 'sh-nl'));
    pc.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 1, nl: true }] });
    const d = await pc.expect('disconnect');
    assert.equal(d.reasonCode, 0x82, topic);
    await pc.waitClosed();
  }
  assert.equal(sharedGauge(), base, 'no subscription was made');
});

test('a shared subscription is in effect when its SUBACK arrives (member, owner, publisher on 3 shards)', {
  timeout: T,
}, async (t) => {
  const { raw: pub } = await rawConnect5(t, broker, { clientId: idOnShard(broker, 3, 'fx-pub') });
  for (let i = 0; i < 12; i++) {
    const F = `sh/fx/${i}`;
    const owner = i % 3; // publisher on 3, member on (owner + 1) % 3, owner on another shard
    const g = groupOwnedBy(owner, F, 'fx');
    const m = await member(t, (owner + 1) % 3, 'fx-m');
    assert.deepEqual(await subscribe5(m.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
    pub.send(publishFrame5({ topic: F, payload: `now${i}`, qos: 1, packetId: i + 1 }));
    const ack = await readFrame(pub);
    // A short PUBACK is success; 0x10 would say No matching subscribers.
    assert.deepEqual([ack.type, [...ack.body]], [4, [0, i + 1]], `PUBACK for ${F}`);
    const [p] = await m.inbox.wait(1);
    assert.equal(p.payload.toString(), `now${i}`);
    await endClient(m.c);
  }
});

test('the owner shard crashes: after its restart the members on other shards receive again', {
  timeout: T,
}, async (t) => {
  const F = 'sh/crash/#';
  const K = 1;
  const g = groupOwnedBy(K, F, 'cr');
  const base = sharedGauge();
  const restarts = broker.counters.snapshot().shardRestarts;
  const onK = await member(t, K, 'cr-k');
  const survivors = [await member(t, 2, 'cr-s'), await member(t, 3, 'cr-s')];
  for (const x of [onK, ...survivors])
    assert.deepEqual(await subscribe5(x.c, `$share/${g}/${F}`, { qos: 1 }), [1]);
  await waitGauge(base + 3);
  const pub = await member(t, 0, 'cr-pub');
  await publishAll(pub.c, range(3, 'pre'), () => 'sh/crash/x');
  await rrFence(pub.c, 'sh/crash/fence', [[onK, ...survivors]], 3);

  const gen = broker.supervisor.shards[K].generation;
  const closedK = new Promise<void>((resolve) => onK.c.once('close', () => resolve()));
  broker.supervisor.post(K, { t: 'crash' });
  await within(closedK, "the crashed shard's client to be disconnected");
  await waitFor(
    () => broker.supervisor.shards[K].generation > gen && broker.supervisor.shards[K].ready,
    'shard restart',
  );
  assert.equal(broker.counters.snapshot().shardRestarts, restarts + 1);
  // The member on the crashed shard is gone with its session: the gauge moves.
  await waitGauge(base + 2);
  // The restarted owner has its group back (its index bit) once the survivors rejoined.
  const mr = new MatchResult();
  await waitFor(
    () => broker.sharedIndex.matchString('sh/crash/x', mr) > 0 && (mr.mask & (1 << K)) !== 0,
    'owner bit',
  );
  const post: string[] = [];
  for (
    let i = 0;
    i < 20 && !survivors.every((x) => got(x, 'sh/crash/x').some((p) => p.startsWith('post')));
    i++
  ) {
    const payload = `post${i}`;
    post.push(payload);
    await publish5(pub.c, 'sh/crash/x', payload, { qos: 1 });
    await waitFor(
      () => survivors.some((x) => got(x, 'sh/crash/x').includes(payload)),
      `${payload} delivered after the restart`,
    );
  }
  assert.ok(
    survivors.every((x) => got(x, 'sh/crash/x').some((p) => p.startsWith('post'))),
    'both survivors receive',
  );
  const received = survivors.flatMap((x) => got(x, 'sh/crash/x').filter((p) => p.startsWith('post')));
  assert.deepEqual(sorted(received), sorted(post), 'each exactly once');
});

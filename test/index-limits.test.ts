/**
 * Topic-index reclamation and subscription limits over real sockets (issue #9 items 4 and 5):
 * unsubscribed filters give their index nodes and arena bytes back, a full index refuses with
 * SUBACK 0x97 (MQTT 3: 0x80) for plain and shared subscriptions, and mqtt.max_subscriptions.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import { ownerShard } from '../src/routing/shared.js';
import {
  assertBrokerServes,
  connectFrame,
  idOnShard,
  mqttString,
  RawClient,
  rawFrame,
  readFrame,
  startBroker,
} from './helpers/broker.js';
import { api, scrape } from './helpers/ops.js';

type Ctx = Parameters<typeof startBroker>[0];

/** SUBSCRIBE (QoS 0 each) for MQTT 3.1.1 or 5 (empty property block). */
function subscribeFrame(v5: boolean, id: number, filters: string[]): Buffer {
  return rawFrame(
    0x82,
    [id >> 8, id & 0xff],
    ...(v5 ? [[0]] : []),
    ...filters.flatMap((f) => [mqttString(f), Buffer.from([0])]),
  );
}

function unsubscribeFrame(v5: boolean, id: number, filters: string[]): Buffer {
  return rawFrame(0xa2, [id >> 8, id & 0xff], ...(v5 ? [[0]] : []), ...filters.map((f) => mqttString(f)));
}

/** A raw connection with CONNACK "accepted" read (v5 CONNACKs carry properties: read whole). */
async function connectRaw(t: Ctx, broker: Broker, clientId: string, v5: boolean): Promise<RawClient> {
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame({ clientId, level: v5 ? 5 : 4 }));
  const f = await readFrame(raw);
  assert.equal(f.type, 2, 'CONNACK');
  assert.equal(f.body[1], 0, 'connection accepted');
  return raw;
}

/** Codes of the SUBACK for packet id `id` (frames of other types are skipped). */
async function suback(raw: RawClient, v5: boolean, id: number): Promise<number[]> {
  for (;;) {
    const f = await readFrame(raw);
    if (f.type !== 9) continue;
    assert.equal(f.body.readUInt16BE(0), id, 'SUBACK packet id');
    // v5: packet id, property length (0 here: no reason string), codes.
    return [...f.body.subarray(v5 ? 2 + 1 + f.body[2]! : 2)];
  }
}

async function unsuback(raw: RawClient, id: number): Promise<void> {
  for (;;) {
    const f = await readFrame(raw);
    if (f.type !== 11) continue;
    assert.equal(f.body.readUInt16BE(0), id, 'UNSUBACK packet id');
    return;
  }
}

async function subscribeCodes(raw: RawClient, v5: boolean, id: number, filters: string[]): Promise<number[]> {
  raw.send(subscribeFrame(v5, id, filters));
  return suback(raw, v5, id);
}

interface IndexUsage {
  nodes: number;
  arenaBytes: number;
  nodesHighWater: number;
  arenaHighWater: number;
}

async function indexUsage(broker: Broker, index: 'topics' | 'shared'): Promise<IndexUsage> {
  const s = await scrape(broker);
  const g = (name: string) => s.get(`emqx_ts_topic_index_${name}{index="${index}"}`);
  return {
    nodes: g('nodes'),
    arenaBytes: g('arena_bytes'),
    nodesHighWater: g('nodes_high_water'),
    arenaHighWater: g('arena_high_water_bytes'),
  };
}

async function counter(broker: Broker, name: string): Promise<number> {
  return (await scrape(broker)).get(name);
}

test('1M unique filters subscribed and unsubscribed: every SUBACK grants and the index returns to its baseline', {
  timeout: 180_000,
}, async (t) => {
  const broker = await startBroker(t);
  const raw = await connectRaw(t, broker, 'churner', false);
  const base = await indexUsage(broker, 'topics');
  const total = 1_000_000;
  const perPacket = 1000;
  const rounds = total / perPacket;
  const depth = 4; // rounds in flight: SUBSCRIBE + UNSUBSCRIBE pipelined
  // Two unique levels per filter: 2M nodes go through the index (twice its default capacity).
  const filtersOf = (r: number) => Array.from({ length: perPacket }, (_, i) => `churn/${r}-${i}/x${r}.${i}`);
  const started = Date.now();
  let sent = 0;
  const send = () => {
    const filters = filtersOf(sent);
    const id = (sent % 30000) + 1;
    raw.send(subscribeFrame(false, id, filters));
    raw.send(unsubscribeFrame(false, id + 30000, filters));
    sent++;
  };
  while (sent < Math.min(depth, rounds)) send();
  let maxHighWater = 0;
  for (let r = 0; r < rounds; r++) {
    const id = (r % 30000) + 1;
    const codes = await suback(raw, false, id);
    assert.equal(codes.length, perPacket);
    // [MQTT-3.9.3-1]: one code per filter, in order; all granted (QoS 0).
    const refused = codes.filter((c) => c !== 0).length;
    assert.equal(refused, 0, `round ${r}: ${refused} of ${perPacket} filters refused`);
    await unsuback(raw, id + 30000);
    if (sent < rounds) send();
    if (r % 250 === 249) {
      const u = await indexUsage(broker, 'topics');
      maxHighWater = Math.max(maxHighWater, u.nodesHighWater);
      // In flight at most `depth` rounds of 2 nodes per filter, plus retired nodes awaiting reuse.
      assert.ok(u.nodesHighWater < base.nodesHighWater + 40_000, `slab grew to ${u.nodesHighWater} nodes`);
    }
  }
  const after = await indexUsage(broker, 'topics');
  t.diagnostic(
    `${total} filters in ${Date.now() - started} ms; nodes ${base.nodes} -> ${after.nodes}, arena bytes ` +
      `${base.arenaBytes} -> ${after.arenaBytes}, slab high-water ${after.nodesHighWater}, arena carved ` +
      `${after.arenaHighWater} bytes`,
  );
  // Back to the baseline: live nodes exactly (only the 'churn' prefix may still be retiring), and
  // at most one reclaim batch (256 nodes × 16 B blocks) of arena bytes not yet given back.
  assert.ok(after.nodes <= base.nodes + 1, `live nodes ${after.nodes} vs ${base.nodes} before`);
  assert.ok(
    after.arenaBytes <= base.arenaBytes + 256 * 16,
    `arena ${after.arenaBytes} vs ${base.arenaBytes}`,
  );
  assert.ok(
    after.arenaHighWater <= 2 << 20,
    `arena carved ${after.arenaHighWater} bytes for ~8 MB of churned text`,
  );
  await assertBrokerServes(t, broker);
});

test('a full topic index refuses new filters with SUBACK 0x97 (MQTT 3: 0x80), plain and shared, counted; the broker keeps serving and unsubscribing frees room', {
  timeout: 120_000,
}, async (t) => {
  // Four 64 KiB arena blocks: four filters of one 40 KB level fill the plain index.
  const broker = await startBroker(t, { 'node.topic_index_arena_bytes': 4 * 65536 });
  const big = (tag: string, i: number) => `${tag}${i}-`.padEnd(40_000, 'x');
  const id0 = idOnShard(broker, 0, 'v5');
  const v5 = await connectRaw(t, broker, id0, true);
  const v3 = await connectRaw(t, broker, idOnShard(broker, 1, 'v3'), false);
  const fullBefore = await counter(broker, 'emqx_ts_subscriptions_index_full_total');

  const bigs = [0, 1, 2, 3].map((i) => big('p', i));
  assert.deepEqual(await subscribeCodes(v5, true, 1, bigs), [0, 0, 0, 0]);
  // [MQTT-3.9.3-1] a refused filter fails alone: the existing filter is still granted.
  assert.deepEqual(await subscribeCodes(v5, true, 2, ['small/a', bigs[0]!]), [0x97, 0]);
  assert.deepEqual(await subscribeCodes(v3, false, 3, ['small/b', bigs[1]!]), [0x80, 0]);

  // Shared: fill the shared-subscription index (4 MiB arena: 64 blocks of 64 KiB).
  const sharedBigs = Array.from({ length: 64 }, (_, i) => `$share/g/${big('s', i)}`);
  for (let i = 0; i < sharedBigs.length; i += 16) {
    const codes = await subscribeCodes(v5, true, 10 + i, sharedBigs.slice(i, i + 16));
    assert.deepEqual(codes, new Array(16).fill(0));
  }
  // One group owned by the subscriber's own shard and one owned by the other shard: the owner's
  // refusal must reach the SUBACK either way, never a silent grant.
  const groupOn = (shard: number) => {
    for (let n = 0; ; n++) if (ownerShard(`g${n}`, 'small/c', 2) === shard) return `$share/g${n}/small/c`;
  };
  const local = groupOn(0);
  const remote = groupOn(1);
  assert.deepEqual(await subscribeCodes(v5, true, 100, [local, remote]), [0x97, 0x97]);
  assert.deepEqual(await subscribeCodes(v3, false, 101, [local, remote]), [0x80, 0x80]);
  // The refused shared subscriptions are not kept by the session either.
  const subs = await api(broker, 'GET', `/clients/${id0}/subscriptions`);
  assert.equal(subs.status, 200);
  const topics = (subs.json as { topic: string }[]).map((s) => s.topic);
  assert.ok(!topics.includes(local) && !topics.includes(remote), `session kept ${topics.join(', ')}`);
  assert.ok(!topics.includes('small/a'));

  const refusedCount = (await counter(broker, 'emqx_ts_subscriptions_index_full_total')) - fullBefore;
  assert.equal(refusedCount, 6, 'every refusal is counted once');
  // Still served while full: a message on an existing filter is delivered (v3 → v5 subscriber).
  v3.send(rawFrame(0x30, mqttString(bigs[0]!), 'still-routing'));
  for (;;) {
    const f = await readFrame(v5);
    if (f.type !== 3) continue;
    assert.ok(f.body.subarray(f.body.length - 13).equals(Buffer.from('still-routing')));
    break;
  }

  // Unsubscribing gives the space back: new filters are granted again, in both indexes.
  v5.send(unsubscribeFrame(true, 200, [...bigs, ...sharedBigs.slice(0, 4)]));
  await unsuback(v5, 200);
  v3.send(unsubscribeFrame(false, 201, [bigs[1]!]));
  await unsuback(v3, 201);
  assert.deepEqual(await subscribeCodes(v3, false, 202, ['small/b', local, remote]), [0, 0, 0]);
  await assertBrokerServes(t, broker);
});

test('mqtt.max_subscriptions: a new filter beyond it gets SUBACK 0x97 (MQTT 3: 0x80), counted; replacing one is allowed', {
  timeout: 60_000,
}, async (t) => {
  const broker = await startBroker(t, { 'mqtt.max_subscriptions': 3 });
  const v5 = await connectRaw(t, broker, 'max5', true);
  const v3 = await connectRaw(t, broker, 'max3', false);
  const before = await counter(broker, 'emqx_ts_subscriptions_refused_max_total');
  assert.deepEqual(
    await subscribeCodes(v5, true, 1, ['a/1', 'a/2', '$share/g/a/3', 'a/4', 'a/5']),
    [0, 0, 0, 0x97, 0x97],
  );
  // Re-subscribing an existing filter replaces it [MQTT-3.8.4-3]: not a new subscription.
  assert.deepEqual(await subscribeCodes(v5, true, 2, ['a/1', 'a/6']), [0, 0x97]);
  assert.deepEqual(await subscribeCodes(v3, false, 3, ['b/1', 'b/2', 'b/3', 'b/4']), [0, 0, 0, 0x80]);
  v5.send(unsubscribeFrame(true, 4, ['a/2']));
  await unsuback(v5, 4);
  assert.deepEqual(await subscribeCodes(v5, true, 5, ['a/6', 'a/7']), [0, 0x97]);
  assert.equal((await counter(broker, 'emqx_ts_subscriptions_refused_max_total')) - before, 5);
  await assertBrokerServes(t, broker);
});

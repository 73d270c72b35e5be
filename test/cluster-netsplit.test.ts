/**
 * Cluster II (issue #11): two nodes racing for the same client id end with exactly one owner,
 * across a netsplit too. Three node processes on loopback; the split is a test switch
 * (EMQX_TS_TEST_PARTITION_FILE, src/cluster/partition.ts): each node sends nothing to the peers
 * its file names, so writing the files splits {A} | {B, C} and emptying them heals.
 * - cluster.claim_quorum = none (default): both sides accept the client; when the split heals
 *   the later claim wins — the other connection is taken over (MQTT 5: DISCONNECT 0x8E,
 *   [MQTT-3.1.4-2]: an existing client with the same id is disconnected) and its session
 *   discarded, so one node lists the client.
 * - majority: the minority side refuses the CONNECT (CONNACK 0x88 Server unavailable in MQTT 5,
 *   return code 3 in 3.1.1) while the majority side accepts it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import mqtt, { type IDisconnectPacket, type MqttClient } from 'mqtt';
import { Registry } from '../src/cluster/registry.js';
import { within } from './helpers/broker.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import { connectTo, pollUntil, subscribeTo } from './helpers/cluster-clients.js';

type Ctx = Parameters<typeof startNode>[0];

/** Three nodes A, B, C with a partition file each; `split` cuts {A} | {B, C}, `heal` ends it. */
async function splittable(t: Ctx, prefix: string, args: string[] = []) {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-netsplit-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (n: string) => join(dir, n);
  for (const n of 'abc') writeFileSync(file(n), '');
  const name = (n: string) => `${prefix}-${n}@127.0.0.1`;
  const start = (n: string, seeds?: number[]) =>
    startNode(t, { name: name(n), seeds, args, env: { EMQX_TS_TEST_PARTITION_FILE: file(n) } });
  const a = await start('a');
  const [b, c] = await Promise.all([start('b', [a.clusterPort]), start('c', [a.clusterPort])]);
  const mesh = async () => {
    for (const [x, y] of [
      [a, b],
      [a, c],
      [b, a],
      [b, c],
      [c, a],
      [c, b],
    ] as const)
      await x.waitPeer(y.name, 'running');
  };
  await mesh();
  return {
    a,
    b,
    c,
    async split() {
      writeFileSync(file('a'), `${b.name}\n${c.name}\n`);
      writeFileSync(file('b'), `${a.name}\n`);
      writeFileSync(file('c'), `${a.name}\n`);
      // Both sides have declared the other down (so no claim waits on an unreachable lock node).
      await Promise.all([
        a.waitPeer(b.name, 'stopped'),
        a.waitPeer(c.name, 'stopped'),
        b.waitPeer(a.name, 'stopped'),
        c.waitPeer(a.name, 'stopped'),
      ]);
    },
    async heal() {
      for (const n of 'abc') writeFileSync(file(n), '');
      await mesh();
    },
  };
}

/** What the nodes logged about peers, claims and heals (printed when a wait fails). */
function diagnose(nodes: TestNode[]): void {
  for (const n of nodes)
    for (const l of n.out.lines)
      if (/netsplit|claim|takeover|peer (up|down)|joined cluster/.test(l)) console.log(`${n.name}: ${l}`);
}

const listed = async (n: TestNode, id: string) =>
  (await n.get(`/clients/${encodeURIComponent(id)}`)).status === 200;

test('netsplit, claim_quorum none: a client id owned on both sides ends with one owner when the split heals', async (t) => {
  const { a, b, c, split, heal } = await splittable(t, 'ns1');
  const id = 'split-brain-1';
  const onA = await connectTo(t, a, id, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await subscribeTo(onA, 'ns/a', 1);
  const takenOver = new Promise<number | undefined>((resolve) =>
    onA.on('disconnect', (p: IDisconnectPacket) => resolve(p.reasonCode)),
  );
  const closedA = new Promise<void>((resolve) => onA.once('close', () => resolve()));

  await split();
  // The majority side does not see A: the same client id connects there too (availability).
  const onB = await connectTo(t, b, id, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await subscribeTo(onB, 'ns/b', 1);
  assert.ok(await listed(a, id), 'during the split, A still holds its connection');
  assert.ok(await listed(b, id), 'and B holds the new one');

  await heal();
  // The later claim (B's) wins: A's connection is taken over [MQTT-3.1.4-2].
  const reason = await within(takenOver, 'A to send DISCONNECT after the heal').catch((err) => {
    diagnose([a, b, c]);
    throw err;
  });
  assert.equal(reason, 0x8e, 'Session taken over');
  await within(closedA, "A's connection to close");
  const where = await pollUntil(
    async () => [await listed(a, id), await listed(b, id), await listed(c, id)],
    (v) => v.filter(Boolean).length === 1,
    'the client id to be listed on exactly one node',
  );
  assert.deepEqual(where, [false, true, false], 'on B, the later claim');
  assert.ok(onB.connected, "B's connection stays");
  // B's session is the one kept: its subscription works.
  const got = new Promise<string>((resolve) => onB.once('message', (_t, p) => resolve(p.toString())));
  const pub = await connectTo(t, c, 'ns1-pub');
  await pub.publishAsync('ns/b', 'after heal', { qos: 1 });
  assert.equal(await within(got, 'the message to the surviving session'), 'after heal');
  const healed = (await a.scrape()).get('emqx_ts_cluster_heal_closed_total');
  assert.equal(healed, 1, 'A counted the session it closed');
});

test('netsplit heal: a client id whose session ended during the split closes nothing on the other side', async (t) => {
  const { a, b, split, heal } = await splittable(t, 'ns3');
  const id = 'split-brain-gone';
  const onA = await connectTo(t, a, id, {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  let reason: number | undefined;
  onA.on('disconnect', (p: IDisconnectPacket) => {
    reason = p.reasonCode;
  });
  await split();
  // On B, the same id connects with a session that ends with its connection (expiry 0).
  const onB = await connectTo(t, b, id, { protocolVersion: 5, clean: true });
  await new Promise<void>((resolve) => onB.end(false, {}, () => resolve()));
  await pollUntil(
    () => listed(b, id),
    (v) => !v,
    'the session on B to end',
  );

  await heal();
  // B looked its record up in its shard and claimed nothing back (claiming it would close A's
  // live client and discard its session for a session that no longer exists).
  const line = await b.out.waitFor((l) => l.includes('netsplit healed'), `${b.name}: the heal`, 20_000);
  assert.equal(JSON.parse(line).reclaimed, 0, 'B claimed back nothing');
  assert.equal(reason, undefined, "A's client got no DISCONNECT");
  assert.ok(onA.connected && (await listed(a, id)), 'and stays connected on A');
});

/** The CONNACK error code (mqtt.js: `error` with the reason / return code) or 0 when accepted. */
function connackOf(
  n: TestNode,
  clientId: string,
  protocolVersion: 4 | 5,
): Promise<{ code: number; c: MqttClient }> {
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: n.mqttPort,
    clientId,
    protocolVersion,
    reconnectPeriod: 0,
  });
  return within(
    new Promise((resolve) => {
      c.once('connect', () => resolve({ code: 0, c }));
      c.once('error', (err) => resolve({ code: (err as { code?: number }).code ?? -1, c }));
    }),
    `CONNACK from ${n.name}`,
  );
}

test('netsplit, claim_quorum majority: the minority side refuses the CONNECT (0x88 / 3), the majority side accepts it', async (t) => {
  const { a, b, c, split, heal } = await splittable(t, 'ns2', ['--cluster.claim_quorum=majority']);
  const names = [a.name, b.name, c.name];
  // A client id whose lock node (among the known members) is on the majority side.
  let id = '';
  for (let i = 0; id === ''; i++) if (Registry.lockNode(`maj-${i}`, names) !== a.name) id = `maj-${i}`;
  const before = await connackOf(a, id, 5);
  assert.equal(before.code, 0, 'with every node reachable, A accepts it');
  before.c.end(true);

  await split();
  const v5 = await connackOf(a, id, 5);
  t.after(() => v5.c.end(true));
  assert.equal(v5.code, 0x88, 'MQTT 5 on the minority side: CONNACK 0x88 Server unavailable');
  const v3 = await connackOf(a, `${id}-v3`, 4);
  t.after(() => v3.c.end(true));
  assert.equal(v3.code, 3, 'MQTT 3.1.1 on the minority side: return code 3 Server unavailable');
  assert.equal((await a.scrape()).get('emqx_ts_cluster_claims_refused_total'), 2, 'A counted both');
  assert.equal((await a.get(`/clients/${id}`)).status, 404, 'and made no session');

  const onB = await connackOf(b, id, 5);
  t.after(() => onB.c.end(true));
  assert.equal(onB.code, 0, 'the majority side accepts the same client id');
  const takenOver = new Promise<number | undefined>((resolve) =>
    onB.c.on('disconnect', (p: IDisconnectPacket) => resolve(p.reasonCode)),
  );

  // Healed: A accepts again, and takes the client over from B [MQTT-3.1.4-2].
  await heal();
  const after = await connackOf(a, id, 5);
  t.after(() => after.c.end(true));
  assert.equal(after.code, 0, 'after the heal, A accepts it');
  assert.equal(await within(takenOver, "B's connection to be taken over"), 0x8e);
  await pollUntil(
    async () => [
      (await a.get(`/clients/${id}`)).status,
      (await b.get(`/clients/${id}`)).status,
      (await c.get(`/clients/${id}`)).status,
    ],
    (v) => v.join() === '200,404,404',
    'the client on A only',
  );
});

/**
 * Cluster II (issue #11) with durability on (the default; cluster test nodes run memory-only
 * unless told): the wills of the clients of a node killed with -9 are published by the cluster,
 * once — the node restarted on its data dir restores those sessions with their wills pending
 * and must not publish them again. A node whose peers never knew its previous incarnation
 * still publishes its restored wills itself [MQTT-3.1.2-8]. Real node processes on loopback,
 * real MQTT clients, real kill -9.
 */
import assert from 'node:assert/strict';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { untilPast } from './helpers/base.js';
import { startNode, type TestNode } from './helpers/cluster.js';
import {
  connectInbox,
  connectTo,
  Inbox,
  pollUntil,
  resumeInbox,
  subscribeTo,
  threeNodes,
  willClient,
} from './helpers/cluster-clients.js';

const DURABLE = ['--durability.mode=sync'];
type Ctx = Parameters<typeof connectTo>[0];

const metric = async (n: TestNode, name: string) => (await n.scrape()).values.get(name) ?? 0;
const count = (got: { topic: string }[], topic: string) => got.filter((g) => g.topic === topic).length;

/**
 * Its session record is committed: in sync mode a QoS 1 PUBLISH to a persistent subscriber is
 * acked once its turn is committed, and one shard commits in order (the CONNECT's record first).
 */
async function committed(c: MqttClient, topic: string): Promise<void> {
  await subscribeTo(c, topic, 1);
  await c.publishAsync(topic, 'x', { qos: 1 });
}

/**
 * The restarted node's word on its restored wills (logged by every shard holding some), or,
 * without it (a broker that does not hold them), long enough for its sweeps to have published
 * them: then a will published by its sweep after that (a client dropped without DISCONNECT,
 * 1 s Will Delay Interval) — what that sweep or an earlier one published arrives before it.
 */
async function afterRestoredWills(t: Ctx, n: TestNode, id: string, sub: Inbox): Promise<void> {
  await n.out
    .waitFor((l) => l.includes('"msg":"restored wills:'), `${n.name}: restored wills`, 20_000)
    .catch(() => {});
  const x = await willClient(t, n, id, `will/${id}`, 1, 30);
  x.stream.destroy();
  await sub.until((g) => g.some((m) => m.topic === `will/${id}`), `${id}'s will (marker)`, 20_000);
}

test('durable cluster: the wills of a node killed with -9 come once, not again when it restarts on its data dir', {
  timeout: 180_000,
}, async (t) => {
  const [n1, n2, n3] = await threeNodes(t, 'wd', [1, 1, 1], { args: DURABLE });
  const s1 = new Inbox(await connectTo(t, n1, 'wd-sub1'));
  await subscribeTo(s1.c, 'will/#', 1);
  await n3.waitPeer(n1.name, 'running', (r) => r >= 1);

  // Persistent sessions on n3: an MQTT 3.1.1 will, and an MQTT 5 will with a 1 s Will Delay
  // Interval [MQTT-3.1.3-9].
  const a = await connectTo(t, n3, 'wd-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  const b = await connectTo(t, n3, 'wd-b', {
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 60 },
    will: {
      topic: 'will/b',
      payload: Buffer.from('b gone'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 1 },
    },
  });
  for (const c of [a, b]) c.on('error', () => {});
  await committed(a, 'wd/a');
  await committed(b, 'wd/b');
  for (const n of [n1, n2])
    await pollUntil(
      () => metric(n, 'emqx_ts_cluster_wills_received_total'),
      (v) => v >= 2,
      `${n.name} to hold the wills`,
    );

  const dataDir = n3.dataDir;
  await n3.kill9();
  // The survivors publish them (the connections ended without DISCONNECT [MQTT-3.1.2-8]).
  await s1.until((g) => count(g, 'will/a') >= 1 && count(g, 'will/b') >= 1, 'wills from the cluster', 30_000);
  await Promise.all([n1.waitPeer(n3.name, 'stopped'), n2.waitPeer(n3.name, 'stopped')]);

  // n3 again on its data dir: both sessions are back with their wills pending, which it must
  // not publish a second time.
  const n3b = await startNode(t, { name: n3.name, seeds: [n1.clusterPort], dataDir, args: DURABLE });
  await n1.waitPeer(n3b.name, 'running');
  await afterRestoredWills(t, n3b, 'wd-x', s1);
  const topics = s1.got.map((g) => g.topic);
  assert.equal(count(s1.got, 'will/a'), 1, `will/a once: ${JSON.stringify(topics)}`);
  assert.equal(count(s1.got, 'will/b'), 1, `will/b once: ${JSON.stringify(topics)}`);
  assert.equal(
    await metric(n3b, 'emqx_ts_wills_restored_dropped_total'),
    2,
    'n3b dropped both restored wills',
  );

  // The sessions themselves are back on n3b (only their wills were the cluster's).
  const present = await new Promise<boolean>((resolve, reject) => {
    const c = mqtt.connect({
      host: '127.0.0.1',
      port: n3b.mqttPort,
      clientId: 'wd-a',
      clean: false,
      reconnectPeriod: 0,
    });
    t.after(() => new Promise<void>((r) => c.end(true, {}, () => r())));
    c.once('connect', (ack) => resolve(ack.sessionPresent));
    c.once('error', reject);
  });
  assert.equal(present, true, 'wd-a resumes its restored session on n3b');
});

test('durable node with cluster discovery but no peer that knew it: its restored will is published after kill -9 + restart, once', {
  timeout: 120_000,
}, async (t) => {
  const name = 'wa1@127.0.0.1';
  const n = await startNode(t, { name, args: DURABLE });
  const sub = await connectInbox(t, n, 'wa-sub', { clean: false });
  await subscribeTo(sub.c, 'will/#', 1);
  const a = await connectTo(t, n, 'wa-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  a.on('error', () => {});
  sub.c.on('error', () => {});
  await committed(a, 'wa/a');
  await committed(sub.c, 'wa/sub');

  await n.kill9();
  const nb = await startNode(t, { name, dataDir: n.dataDir, args: DURABLE });
  // The subscriber's persistent session is back too: the will reaches it, queued or live.
  const sub2 = await connectInbox(t, nb, 'wa-sub', { clean: false });
  await sub2.until((g) => count(g, 'will/a') >= 1, 'the restored will from the restarted node', 30_000);
  await afterRestoredWills(t, nb, 'wa-x', sub2);
  assert.equal(count(sub2.got, 'will/a'), 1, `will/a once: ${JSON.stringify(sub2.got.map((g) => g.topic))}`);
  assert.equal(
    await metric(nb, 'emqx_ts_wills_restored_dropped_total'),
    0,
    'nothing dropped: no peer published it',
  );
});

test('durable cluster restarted as a whole (both nodes killed with -9): the restarted node publishes its restored will, once; its peer answers that it published none', {
  timeout: 120_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'wr1@127.0.0.1', args: DURABLE });
  const n2 = await startNode(t, { name: 'wr2@127.0.0.1', seeds: [n1.clusterPort], args: DURABLE });
  await n1.waitPeer(n2.name, 'running');
  const sub = await connectInbox(t, n2, 'wr-sub', { clean: false });
  sub.c.on('error', () => {});
  await subscribeTo(sub.c, 'will/#', 1);
  const a = await connectTo(t, n2, 'wr-a', {
    clean: false,
    will: { topic: 'will/a', payload: Buffer.from('a gone'), qos: 1, retain: false },
  });
  a.on('error', () => {});
  await committed(a, 'wr/a');
  await committed(sub.c, 'wr/sub');
  await pollUntil(
    () => metric(n1, 'emqx_ts_cluster_wills_received_total'),
    (v) => v >= 1,
    `${n1.name} to hold the will`,
  );

  // Both at once: n1 dies long before it could see n2 down (down_after 2 s).
  await Promise.all([n1.kill9(), n2.kill9()]);
  const n1b = await startNode(t, { name: n1.name, dataDir: n1.dataDir, args: DURABLE });
  const n2b = await startNode(t, {
    name: n2.name,
    seeds: [n1b.clusterPort],
    dataDir: n2.dataDir,
    args: DURABLE,
  });
  // n1b answered n2b's first join round (it knew no previous incarnation of n2: nothing fired).
  const round = await n2b.out.waitFor((l) => l.includes('"msg":"first join round over'), 'first join round');
  const lines = n2b.out.lines;
  const joined = lines.findIndex((l) => l.includes('"msg":"joined cluster peer"'));
  assert.ok(joined >= 0 && joined < lines.indexOf(round), 'n2b joined n1b in its first join round');
  assert.match(round, /"fired":0/);
  const sub2 = await connectInbox(t, n2b, 'wr-sub', { clean: false });
  await sub2.until((g) => count(g, 'will/a') >= 1, 'the restored will from the restarted node', 30_000);
  await afterRestoredWills(t, n2b, 'wr-x', sub2);
  assert.equal(count(sub2.got, 'will/a'), 1, `will/a once: ${JSON.stringify(sub2.got.map((g) => g.topic))}`);
  assert.equal(await metric(n2b, 'emqx_ts_wills_restored_dropped_total'), 0, 'nothing dropped');
  assert.equal(await metric(n1b, 'emqx_ts_cluster_wills_published_total'), 0, 'n1b published none of it');
});

/** A TCP server that accepts and never answers: a seed whose joins time out (join timeout 2 s). */
async function silentSeed(t: Ctx): Promise<number> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return (server.address() as AddressInfo).port;
}

test('durable: a session that expired while its node was down has its will published at the next start, once, then it is purged — also when the node is killed again while it holds that will for its first join round [MQTT-3.1.3-9]', {
  timeout: 180_000,
}, async (t) => {
  const name = 'we1@127.0.0.1';
  const n = await startNode(t, { name, args: DURABLE });
  const sub = await connectInbox(t, n, 'we-sub', { clean: false });
  sub.c.on('error', () => {});
  await subscribeTo(sub.c, 'will/#', 1);
  // Will Delay Interval 60 s, Session Expiry Interval 8 s: the will is due when the session ends.
  const EXPIRY = 8;
  const w = await willClient(t, n, 'we-w', 'will/w', 60, EXPIRY);
  await committed(w, 'we/w');
  const closedAt = Date.now();
  w.stream.destroy();
  await pollUntil(
    () => metric(n, 'emqx_client_disconnected'),
    (v) => v >= 1,
    'the close on the node',
  );
  // The offline session with its pending will is committed (a later SUBACK on the same shard
  // waits for its own commit), then the node dies before the session expires.
  await subscribeTo(sub.c, 'we/after-close', 1);
  await n.kill9();
  assert.ok(Date.now() < closedAt + EXPIRY * 1000, 'killed before the session expired (test premise)');
  assert.equal(count(sub.got, 'will/w'), 0, 'no will before the kill (test premise)');
  await untilPast(closedAt + EXPIRY * 1000 + 500, 'the session to expire while the node is down');

  // Start 2, seeded with a peer that never answers: the restored wills are held for the first
  // join round (two join timeouts + 1 s); the node is killed again inside it.
  const seed = await silentSeed(t);
  const n2 = await startNode(t, { name, seeds: [seed], dataDir: n.dataDir, args: DURABLE });
  const sub2 = await connectInbox(t, n2, 'we-sub', { clean: false });
  sub2.c.on('error', () => {});
  // A commit after the restore's writes (the SUBACK waits for its own).
  await subscribeTo(sub2.c, 'we/after-restart', 1);
  const round = () => n2.out.lines.some((l) => l.includes('"msg":"first join round over'));
  assert.equal(round(), false, 'killed inside the first join round (test premise)');
  await n2.kill9();
  assert.equal(round(), false, 'killed inside the first join round (test premise)');
  assert.equal(count(sub2.got, 'will/w'), 0, 'the will was held (test premise)');

  // Start 3, alone: the will comes, once.
  const n3 = await startNode(t, { name, dataDir: n.dataDir, args: DURABLE });
  const sub3 = await connectInbox(t, n3, 'we-sub', { clean: false });
  sub3.c.on('error', () => {});
  await sub3.until((g) => count(g, 'will/w') >= 1, "the expired session's will after the restart", 30_000);
  await afterRestoredWills(t, n3, 'we-x', sub3);
  assert.equal(count(sub3.got, 'will/w'), 1, `will/w once: ${JSON.stringify(sub3.got.map((g) => g.topic))}`);
  await subscribeTo(sub3.c, 'we/after-will', 1);
  await n3.kill9();

  // Start 4: the session was purged with its will's publish: no second will, nothing to resume.
  const n4 = await startNode(t, { name, dataDir: n.dataDir, args: DURABLE });
  const sub4 = await connectInbox(t, n4, 'we-sub', { clean: false });
  sub4.c.on('error', () => {});
  await afterRestoredWills(t, n4, 'we-y', sub4);
  assert.equal(
    count(sub4.got, 'will/w'),
    0,
    `no will/w again: ${JSON.stringify(sub4.got.map((g) => g.topic))}`,
  );
  const { connack } = await resumeInbox(t, n4, 'we-w', {
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: EXPIRY },
  });
  assert.equal(connack.sessionPresent, false, 'the expired session is gone');
});

test('durable cluster: a will waiting for its delay on a node killed with -9 is published by the survivor when the session ends; the node restarted after that drops it and purges the session, once [MQTT-3.1.3-9]', {
  timeout: 180_000,
}, async (t) => {
  const n1 = await startNode(t, { name: 'wc1@127.0.0.1', args: DURABLE });
  const n2 = await startNode(t, { name: 'wc2@127.0.0.1', seeds: [n1.clusterPort], args: DURABLE });
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  const s1 = await connectInbox(t, n1, 'wc-sub1');
  await subscribeTo(s1.c, 'will/#', 1);
  const keep = await connectTo(t, n2, 'wc-keep', { clean: false });
  keep.on('error', () => {});
  // Will Delay Interval 60 s, Session Expiry Interval 6 s: due when the session ends.
  const EXPIRY = 6;
  const w = await willClient(t, n2, 'wc-w', 'will/w', 60, EXPIRY);
  await committed(w, 'wc/w');
  const received = () => metric(n1, 'emqx_ts_cluster_wills_received_total');
  await pollUntil(received, (v) => v >= 1, 'n1 to hold the will');
  const closedAt = Date.now();
  w.stream.destroy();
  await pollUntil(received, (v) => v >= 2, 'n1 to hold the pending will');
  await subscribeTo(keep, 'wc/after-close', 1); // n2's record of the offline session is committed
  await n2.kill9();
  assert.ok(Date.now() < closedAt + EXPIRY * 1000, 'killed before the session expired (test premise)');

  await s1.until((g) => count(g, 'will/w') >= 1, 'the will from the survivor', 30_000);
  await untilPast(closedAt + EXPIRY * 1000 + 500, 'the session to have expired');
  await n1.waitPeer(n2.name, 'stopped');
  // n2 again on its data dir: the expired session's will is the cluster's: dropped, not again.
  const again = () =>
    startNode(t, { name: n2.name, seeds: [n1.clusterPort], dataDir: n2.dataDir, args: DURABLE });
  const n2b = await again();
  await afterRestoredWills(t, n2b, 'wc-x', s1);
  assert.equal(count(s1.got, 'will/w'), 1, `will/w once: ${JSON.stringify(s1.got.map((g) => g.topic))}`);
  assert.equal(await metric(n2b, 'emqx_ts_wills_restored_dropped_total'), 1, 'n2b dropped the will');
  assert.equal(await metric(n2b, 'emqx_ts_sessions_purged_total'), 1, 'the expired session');
  // Its record went with the drop: a later start finds nothing of it.
  const keep2 = await connectTo(t, n2b, 'wc-keep', { clean: false });
  keep2.on('error', () => {});
  await subscribeTo(keep2, 'wc/after-drop', 1);
  await n2b.kill9();
  const n2c = await again();
  await afterRestoredWills(t, n2c, 'wc-y', s1);
  assert.equal(await metric(n2c, 'emqx_ts_sessions_purged_total'), 0, 'no expired session left to purge');
  assert.equal(count(s1.got, 'will/w'), 1, `will/w once: ${JSON.stringify(s1.got.map((g) => g.topic))}`);
});

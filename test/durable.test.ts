/**
 * Durable state (issue #14, docs/DURABILITY.md): persistent sessions, their queued and inflight
 * QoS 1/2 messages, QoS 2 ids and retained messages survive `kill -9` of the broker process and
 * a shard crash. Real broker processes (`node dist/src/main.js`) and real threads, each on its
 * own temporary data dir; `npm test` builds dist/ first.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { IConnackPacket, IPublishPacket } from 'mqtt-packet';
import type { Broker } from '../src/broker/broker.js';
import { shardOf } from '../src/listener/client-id.js';
import {
  type Ctx,
  HANG_GUARD_MS,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  waitFor,
  within,
} from './helpers/broker.js';
import { scrapeCounter, spawnBroker, startProcess } from './helpers/durable-process.js';
import { PacketClient } from './helpers/raw.js';

const T = 120_000;

function tempDir(t: Ctx, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function connect(
  t: Ctx,
  port: number,
  opts: IClientOptions,
  onClient?: (c: MqttClient) => void,
): Promise<{ c: MqttClient; connack: IConnackPacket }> {
  const c = mqtt.connect({
    host: '127.0.0.1',
    port,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: HANG_GUARD_MS,
    ...opts,
  });
  t.after(() => {
    c.end(true);
  });
  onClient?.(c);
  const connack = await within(
    new Promise<IConnackPacket>((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before CONNACK')));
    }),
    'CONNACK',
  );
  c.removeAllListeners('error');
  c.on('error', () => {});
  return { c, connack };
}

function end(c: MqttClient): Promise<void> {
  return new Promise((resolve) => c.end(false, {}, () => resolve()));
}

/** A client id (prefix-n) on `shard` of a 2-shard broker. */
function onShard(shard: number, prefix: string): string {
  for (let n = 0; ; n++) if (shardOf(`${prefix}-${n}`, 2) === shard) return `${prefix}-${n}`;
}

/**
 * Reconnects each subscriber with clean session 0 and checks: session present 1 [MQTT-3.2.2-2],
 * every QoS 1 message at least once and every QoS 2 message exactly once [MQTT-4.3.3-?]. A
 * sentinel published after the reconnect arrives after the stored ones (they are queued ahead
 * of it), so duplicates would have shown by then.
 */
async function checkRedelivery(
  t: Ctx,
  port: number,
  subs: string[],
  topic: string,
  expected: { qos1: string[]; qos2: string[] },
): Promise<void> {
  const pub = (await connect(t, port, { clientId: `${topic}-sentinel-pub` })).c;
  for (const id of subs) {
    let inbox: Inbox | undefined;
    const { c, connack } = await connect(t, port, { clientId: id, clean: false }, (c) => {
      inbox = new Inbox(c);
    });
    assert.equal(connack.sessionPresent, true, `${id}: session present after restart`);
    await publish(pub, `${topic}/sentinel`, `sentinel-${id}`, { qos: 2 });
    await waitFor(() => inbox!.messages.some((m) => m.payload === `sentinel-${id}`), `${id}: sentinel`);
    const got = new Map<string, number>();
    for (const m of inbox!.messages) got.set(m.payload, (got.get(m.payload) ?? 0) + 1);
    for (const p of expected.qos1) assert.ok((got.get(p) ?? 0) >= 1, `${id}: QoS 1 ${p} delivered`);
    for (const p of expected.qos2) assert.equal(got.get(p), 1, `${id}: QoS 2 ${p} delivered exactly once`);
    // Their subscriptions came back too: a message published now reaches them.
    await end(c);
  }
  await end(pub);
}

test('kill -9: offline persistent sessions get every acked QoS 1/2 message after a restart (QoS 2 once), retained and wills are back, expired sessions purged', {
  timeout: T,
}, async (t) => {
  const dir = tempDir(t, 'emqx-ts-durable-');
  const first = await startProcess(t, dir, ['--durability.mode=sync']);
  const topic = 'kill9';
  // Persistent subscribers on both shards (MQTT 3.1.1 clean session 0, MQTT 5 expiry 3600).
  const subs = [onShard(0, 'k9-sub'), onShard(1, 'k9-sub')];
  for (const id of subs) {
    const { c } = await connect(t, first.port, { clientId: id, clean: false });
    assert.deepEqual(await subscribe(c, `${topic}/#`, 2), [2]);
    await end(c);
  }
  const sub5 = onShard(1, 'k9-sub5');
  {
    const { c } = await connect(t, first.port, {
      clientId: sub5,
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    await subscribe(c, `${topic}/#`, 2);
    await end(c);
  }
  // The delayed will's subscriber: a session of its own, reconnected once after the restart.
  const willSub = onShard(1, 'k9-willsub');
  {
    const { c } = await connect(t, first.port, { clientId: willSub, clean: false });
    await subscribe(c, 'k9will/#', 1);
    await end(c);
  }
  // A session that expires (1 s) while the broker is down: purged at start.
  const short = onShard(0, 'k9-short');
  {
    const { c } = await connect(t, first.port, {
      clientId: short,
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: 1 },
    });
    await subscribe(c, `${topic}/#`, 1);
    await end(c);
  }
  const shortGoneAt = Date.now() + 1500;
  // A client with a delayed will, connected when the broker is killed: its connection ends
  // without DISCONNECT, so after the restart the will is due after its delay [MQTT-3.1.3-9].
  const willer = await connect(t, first.port, {
    clientId: onShard(0, 'k9-will'),
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 60 },
    will: {
      topic: 'k9will/w',
      payload: Buffer.from('gone'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 1 },
    },
  });
  // Its PUBACK comes after the commit of a later turn than its CONNECT: its session is stored.
  await publish(willer.c, 'k9other', 'x', { qos: 1 });

  // Publishers on both shards: every message acked (PUBACK / PUBCOMP) before the kill.
  const qos1: string[] = [];
  const qos2: string[] = [];
  for (const shard of [0, 1]) {
    const { c } = await connect(t, first.port, { clientId: onShard(shard, 'k9-pub') });
    const acks: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) {
      const p1 = `q1-${shard}-${i}`;
      const p2 = `q2-${shard}-${i}`;
      qos1.push(p1);
      qos2.push(p2);
      acks.push(publish(c, `${topic}/a`, p1, { qos: 1 }), publish(c, `${topic}/b`, p2, { qos: 2 }));
    }
    await Promise.all(acks);
    await publish(c, `k9retained/${shard}`, `kept-${shard}`, { qos: 1, retain: true });
  }
  first.p.child.kill('SIGKILL');
  assert.equal((await within(first.p.done, 'broker killed')).signal, 'SIGKILL');
  await waitFor(() => Date.now() > shortGoneAt, 'the short session to expire');

  const second = await startProcess(t, dir, ['--durability.mode=sync']);
  await second.p.out.waitFor((l) => l.includes('persistent sessions restored'), 'sessions restored');
  await checkRedelivery(t, second.port, [...subs, sub5], topic, { qos1, qos2 });
  // The will subscriber gets the delayed will of the client that was connected at the kill.
  {
    let inbox: Inbox | undefined;
    await connect(t, second.port, { clientId: willSub, clean: false }, (c) => {
      inbox = new Inbox(c);
    });
    await waitFor(
      () => inbox!.messages.some((m) => m.topic === 'k9will/w' && m.payload === 'gone'),
      'delayed will',
    );
  }
  // Expired while the broker was down: not resumed.
  {
    const { connack } = await connect(t, second.port, {
      clientId: short,
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: 1 },
    });
    assert.equal(connack.sessionPresent, false, 'an expired session is purged, not resumed');
  }
  // Retained messages are back [MQTT-3.3.1-6].
  {
    let inbox: Inbox | undefined;
    const { c } = await connect(t, second.port, { clientId: 'k9-retained-reader' }, (c) => {
      inbox = new Inbox(c);
    });
    await subscribe(c, 'k9retained/+', 1);
    await inbox!.wait(2);
    assert.deepEqual(inbox!.messages.map((m) => [m.payload, m.retain]).sort(), [
      ['kept-0', true],
      ['kept-1', true],
    ]);
  }
  second.p.child.kill('SIGTERM');
  assert.equal((await within(second.p.done, 'broker stopped')).code, 0);
});

test('kill -9: online persistent subscribers get the acked messages they had not acknowledged again, with their packet ids; the publisher saw every PUBACK/PUBCOMP only after the commit', {
  timeout: T,
}, async (t) => {
  const dir = tempDir(t, 'emqx-ts-durable-online-');
  // All 80 messages fit the inflight window of a subscriber that acknowledges none.
  const flags = ['--durability.mode=sync', '--mqtt.max_inflight=128'];
  const first = await startProcess(t, dir, flags);
  const at = { port: first.port } as Broker;
  // Online persistent subscribers that read but never acknowledge (a raw client sends nothing by
  // itself), one per shard, and one on shard 1 that acknowledges everything at once: its
  // deliveries are done before they are written, the others' must be stored before the PUBACK.
  const silent = [onShard(0, 'on-silent'), onShard(1, 'on-silent')];
  const acker = onShard(1, 'on-acker');
  const clients = new Map<string, PacketClient>();
  for (const id of [...silent, acker]) {
    const { pc, connack } = await PacketClient.connect(t, at, id, { clean: false });
    assert.equal(connack.returnCode, 0);
    await pc.subscribe('online/#', 2);
    clients.set(id, pc);
  }
  // A persistent session per shard that stays offline: a QoS 1 message to it, published on
  // its shard, is acked after a commit of that shard, which writes all the shard had pending.
  const barrierPubs: MqttClient[] = [];
  for (const shard of [0, 1]) {
    const { c } = await connect(t, first.port, { clientId: onShard(shard, 'on-barrier-sub'), clean: false });
    await subscribe(c, `barrier/${shard}`, 1);
    await end(c);
    barrierPubs.push((await connect(t, first.port, { clientId: onShard(shard, 'on-barrier-pub') })).c);
  }
  const { c: pub } = await connect(t, first.port, { clientId: onShard(0, 'on-pub') });
  const qos1: string[] = [];
  const qos2: string[] = [];
  const acks: Promise<void>[] = [];
  for (let i = 0; i < 40; i++) {
    qos1.push(`on1-${i}`);
    qos2.push(`on2-${i}`);
    acks.push(
      publish(pub, 'online/a', `on1-${i}`, { qos: 1 }),
      publish(pub, 'online/b', `on2-${i}`, { qos: 2 }),
    );
  }
  // The acker answers every PUBLISH as it arrives (PUBACK, or PUBREC then PUBCOMP on PUBREL).
  const ackerPc = clients.get(acker)!;
  let ackerDone = false;
  const ackLoop = (async () => {
    let got = 0;
    while (got < 80 || !ackerDone) {
      const p = await ackerPc.next().catch(() => null);
      if (p === null) return;
      if (p.cmd === 'publish') {
        got++;
        if (p.qos === 1) ackerPc.send({ cmd: 'puback', messageId: p.messageId! });
        else ackerPc.send({ cmd: 'pubrec', messageId: p.messageId! });
      } else if (p.cmd === 'pubrel') ackerPc.send({ cmd: 'pubcomp', messageId: p.messageId! });
      if (got >= 80) ackerDone = true;
    }
  })();
  await Promise.all(acks);
  // Every message reached the silent subscribers, each with its packet id.
  const sentIds = new Map<string, Map<string, number>>();
  for (const id of silent) {
    const pc = clients.get(id)!;
    const ids = new Map<string, number>();
    while (ids.size < 80) {
      const p = await pc.expect('publish');
      ids.set(String(p.payload), p.messageId!);
    }
    sentIds.set(id, ids);
  }
  // The QoS 1 deliveries to the silent subscribers were held for their PUBACK
  // (durability.online_ack_wait) and written when the wait was over; a publisher's PUBACK needed
  // only one of the records carrying its message (the outbox entry on shard 0 for shard 1's
  // subscriber). Wait until all 80 are written.
  // (More when the acker's PUBACKs came late.)
  while ((await scrapeCounter(first.metricsPort, 'emqx_ts_store_held_written_total')) < 80)
    await new Promise((r) => setTimeout(r, 20));
  // A delivery queued first (the subscriber's socket was congested) and sent later was acked to
  // the publisher once its queued record was committed; that it was sent, with which packet id,
  // is written by a later flush. Wait for it: each shard commits once more after the sends.
  await Promise.all(barrierPubs.map((c, shard) => publish(c, `barrier/${shard}`, 'barrier', { qos: 1 })));
  first.p.child.kill('SIGKILL');
  assert.equal((await within(first.p.done, 'broker killed')).signal, 'SIGKILL');
  await ackLoop;

  const second = await startProcess(t, dir, flags);
  const at2 = { port: second.port } as Broker;
  for (const id of silent) {
    const { pc, connack } = await PacketClient.connect(t, at2, id, { clean: false });
    assert.equal(connack.sessionPresent, true, `${id}: session present after restart [MQTT-3.2.2-2]`);
    const again = new Map<string, IPublishPacket>();
    while (again.size < 80) {
      const p = await pc.expect('publish');
      again.set(String(p.payload), p);
    }
    const ids = sentIds.get(id)!;
    for (const m of [...qos1, ...qos2]) {
      const p = again.get(m);
      assert.ok(p, `${id}: ${m} resent after the restart`);
      // Unacknowledged PUBLISHes are resent with their original packet ids and DUP [MQTT-4.4.0-1].
      assert.equal(p.messageId, ids.get(m), `${id}: ${m} keeps its packet id`);
      assert.equal(p.dup, true, `${id}: ${m} resent with DUP [MQTT-3.3.1-1]`);
    }
  }
  // The acker's session is back too; what it acknowledged before the kill may come again at
  // QoS 1 (at least once), never at QoS 2 once PUBCOMP was sent and committed.
  const { connack } = await PacketClient.connect(t, at2, acker, { clean: false });
  assert.equal(connack.sessionPresent, true);
  second.p.child.kill('SIGTERM');
  assert.equal((await within(second.p.done, 'broker stopped')).code, 0);
});

test('batched mode also restores sessions after kill -9 (acked before the flush interval ended)', {
  timeout: T,
}, async (t) => {
  const dir = tempDir(t, 'emqx-ts-durable-b-');
  const first = await startProcess(t, dir, ['--durability.mode=batched', '--durability.flush_interval=5']);
  const id = onShard(1, 'b-sub');
  {
    const { c } = await connect(t, first.port, { clientId: id, clean: false });
    await subscribe(c, 'batched/#', 1);
    await end(c);
  }
  const { c: pub } = await connect(t, first.port, { clientId: onShard(0, 'b-pub') });
  const sent: string[] = [];
  for (let i = 0; i < 20; i++) sent.push(`m${i}`);
  await Promise.all(sent.map((p) => publish(pub, 'batched/x', p, { qos: 1 })));
  // batched acks at once: the loss window is the flush interval. A QoS 1 round trip through
  // shard 1 after it (a subscriber there) is only answered once its turn is done; then wait
  // out the interval (plus the commit) before killing.
  const ackedAt = Date.now();
  await waitFor(() => Date.now() > ackedAt + 500, 'flush interval to pass');
  first.p.child.kill('SIGKILL');
  await within(first.p.done, 'broker killed');
  const second = await startProcess(t, dir, ['--durability.mode=batched']);
  await checkRedelivery(t, second.port, [id], 'batched', { qos1: sent, qos2: [] });
});

test('a shard crash: its persistent sessions come back with their queued QoS 1/2 messages, QoS 2 once', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'durability.mode': 'sync' });
  const port = broker.port;
  const topic = 'crash';
  // Subscribers on shard 1 (the one that crashes) and shard 0.
  const subs = [
    idOnShard(broker, 1, 'cr-sub'),
    idOnShard(broker, 1, 'cr-sub2'),
    idOnShard(broker, 0, 'cr-sub'),
  ];
  for (const id of subs) {
    const { c } = await connect(t, port, { clientId: id, clean: false });
    await subscribe(c, `${topic}/#`, 2);
    await end(c);
  }
  const qos1: string[] = [];
  const qos2: string[] = [];
  for (const shard of [0, 1]) {
    const { c } = await connect(t, port, { clientId: idOnShard(broker, shard, 'cr-pub') });
    const acks: Promise<void>[] = [];
    for (let i = 0; i < 30; i++) {
      qos1.push(`c1-${shard}-${i}`);
      qos2.push(`c2-${shard}-${i}`);
      acks.push(
        publish(c, `${topic}/a`, `c1-${shard}-${i}`, { qos: 1 }),
        publish(c, `${topic}/b`, `c2-${shard}-${i}`, { qos: 2 }),
      );
    }
    await Promise.all(acks);
    await end(c);
  }
  const s1 = broker.supervisor.shards[1];
  const generation = s1.generation;
  const restarts = broker.counters.snapshot().shardRestarts;
  broker.supervisor.post(1, { t: 'crash' });
  await waitFor(() => broker.counters.snapshot().shardRestarts === restarts + 1, 'shard 1 restart');
  await waitFor(() => s1.generation > generation && s1.ready && s1.worker !== null, 'shard 1 ready');
  await checkRedelivery(t, port, subs, topic, { qos1, qos2 });
  assert.ok(broker.counters.snapshot().sessionsRestored >= 2, 'sessions restored from the store');
});

test('a shard crash while messages to it are in flight from the other shard: they are re-sent from the outbox, once', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'durability.mode': 'sync' });
  const port = broker.port;
  const sub = idOnShard(broker, 1, 'ob-sub');
  {
    const { c } = await connect(t, port, { clientId: sub, clean: false });
    await subscribe(c, 'outbox/#', 2);
    await end(c);
  }
  const s1 = broker.supervisor.shards[1];
  const generation = s1.generation;
  const { c: pub } = await connect(t, port, { clientId: idOnShard(broker, 0, 'ob-pub') });
  // Crash shard 1 while shard 0 is publishing to it: batches posted to the dying port and
  // while it is down are acked from shard 0's outbox and must reach the restarted shard.
  const qos2: string[] = [];
  const acks: Promise<void>[] = [];
  for (let i = 0; i < 50; i++) {
    qos2.push(`o-${i}`);
    acks.push(publish(pub, 'outbox/x', `o-${i}`, { qos: 2 }));
    if (i === 10) broker.supervisor.post(1, { t: 'crash' });
  }
  await Promise.all(acks);
  await waitFor(() => s1.generation > generation && s1.ready && s1.worker !== null, 'shard 1 ready');
  await checkRedelivery(t, port, [sub], 'outbox', { qos1: [], qos2 });
});

test('a shard down (crashed, not restarted yet): QoS 1/2 messages acked meanwhile reach its persistent sessions after the restart', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'durability.mode': 'sync' });
  const port = broker.port;
  const sub = idOnShard(broker, 1, 'down-sub');
  {
    const { c } = await connect(t, port, { clientId: sub, clean: false });
    await subscribe(c, 'down/#', 2);
    await end(c);
  }
  const { c: pub } = await connect(t, port, { clientId: idOnShard(broker, 0, 'down-pub') });
  const s1 = broker.supervisor.shards[1];
  const generation = s1.generation;
  const restarts = broker.counters.snapshot().shardRestarts;
  broker.supervisor.post(1, { t: 'crash' });
  // Main counts the restart when it sees the shard exit; the new thread starts after a delay
  // and is ready only once it has restored its sessions: publish in between.
  await waitFor(() => broker.counters.snapshot().shardRestarts === restarts + 1, 'shard 1 down');
  const qos1: string[] = [];
  const qos2: string[] = [];
  const acks: Promise<void>[] = [];
  let ackedWhileDown = 0;
  const count = () => {
    if (!s1.ready) ackedWhileDown++;
  };
  for (let i = 0; i < 20; i++) {
    qos1.push(`d1-${i}`);
    qos2.push(`d2-${i}`);
    acks.push(
      publish(pub, 'down/a', `d1-${i}`, { qos: 1 }).then(count),
      publish(pub, 'down/b', `d2-${i}`, { qos: 2 }).then(count),
    );
  }
  await Promise.all(acks);
  t.diagnostic(`${ackedWhileDown} of 40 acked while shard 1 was down`);
  await waitFor(() => s1.generation > generation && s1.ready && s1.worker !== null, 'shard 1 ready');
  await checkRedelivery(t, port, [sub], 'down', { qos1, qos2 });
});

test('a corrupt data dir or one that cannot be created: a clear error and exit code 3, never memory-only', {
  timeout: T,
}, async (t) => {
  const dir = tempDir(t, 'emqx-ts-corrupt-');
  writeFileSync(join(dir, 'data.mdb'), Buffer.alloc(64 * 1024, 0x5a));
  const corrupt = spawnBroker(t, dir);
  const r1 = await within(corrupt.done, 'exit on a corrupt data dir');
  assert.equal(r1.code, 3);
  assert.match(corrupt.err.lines.join('\n'), /data dir: .*data\.mdb is not an LMDB environment/);
  assert.ok(!corrupt.out.lines.some((l) => l.includes('"msg":"listening"')), 'it never listened');

  // A path under a regular file cannot be a directory.
  const file = join(dir, 'plain-file');
  writeFileSync(file, 'x');
  const unwritable = spawnBroker(t, join(file, 'data'));
  const r2 = await within(unwritable.done, 'exit on an unusable data dir');
  assert.equal(r2.code, 3);
  assert.match(unwritable.err.lines.join('\n'), /data dir: cannot create data dir .*plain-file/);

  // And a good one starts (the default is durable: it writes there).
  const okDir = join(dir, 'fresh');
  mkdirSync(okDir);
  const ok = await startProcess(t, okDir);
  await ok.p.out.waitFor(
    (l) => l.includes('"msg":"durable store opened"') && l.includes('"mode":"sync"'),
    'store opened',
  );
  // Signal handlers are installed once start-up is complete (this is its last line).
  await ok.p.out.waitFor((l) => l.includes('"msg":"metrics, health and REST API listening"'), 'started');
  ok.p.child.kill('SIGTERM');
  const r3 = await within(ok.p.done, 'stopped');
  assert.equal(r3.code, 0, `signal ${r3.signal}; stderr: ${ok.p.err.lines.slice(-5).join('\n')}`);
});

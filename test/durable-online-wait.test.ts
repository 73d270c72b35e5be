/**
 * `durability.online_ack_wait` (docs/DURABILITY.md, "Held writes"): in sync mode a QoS 1
 * delivery to a *connected* persistent session is held for its PUBACK before it is written, and
 * an outbox entry for the receiver's confirmation. The wait only delays the write: the
 * publisher's PUBACK still waits until each record is committed or the subscriber has
 * acknowledged it, so an acked message survives `kill -9`. Real broker processes
 * (`node dist/src/main.js`), real sockets; the subscriber is a raw client that acknowledges only
 * what the test says.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { shardOf } from '../src/listener/client-id.js';
import { type Ctx, clientAt, HANG_GUARD_MS, publish, within } from './helpers/broker.js';
import { scrapeCounter, startProcess } from './helpers/durable-process.js';
import { PacketClient } from './helpers/raw.js';

const T = 120_000;
/** Long, so that the test can tell a held write from one made at the next flush */
const WAIT_MS = 1500;

/** A counter of the broker process, summed over its threads. */
function counter(p: { metricsPort: number }, name: string): Promise<number> {
  return scrapeCounter(p.metricsPort, name);
}

async function waitFor(cond: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + HANG_GUARD_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function connect(t: Ctx, port: number, clientId: string): Promise<MqttClient> {
  return clientAt(t, `mqtt://127.0.0.1:${port}`, { clientId, protocolVersion: 4 });
}

function onShard(shard: number, prefix: string): string {
  for (let n = 0; ; n++) if (shardOf(`${prefix}-${n}`, 2) === shard) return `${prefix}-${n}`;
}

/**
 * A connected persistent subscriber on shard 1 that acknowledges only the messages whose payload
 * ends in `-ack` (at once, within the wait) and never the others; QoS 1 publishers on shard 1
 * (deliveries held on the publisher's own shard) and shard 0 (held outbox entry there, held
 * deliveries and a batch not confirmed until they are done on shard 1). Killed with `kill -9`
 * right after the last PUBACK; after the restart the subscriber, reconnecting with clean start 0,
 * gets every acked message it had not acknowledged.
 */
async function heldThenKilled(t: Ctx, which: ('l' | 'r')[]): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-online-wait-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const flags = [
    '--durability.mode=sync',
    `--durability.online_ack_wait=${WAIT_MS}`,
    // Every message fits the window of a subscriber that acknowledges a third of them.
    '--mqtt.max_inflight=128',
  ];
  const first = await startProcess(t, dir, flags);
  const at = { port: first.port } as Broker;
  const subId = onShard(1, 'ow-sub');
  const { pc: sub, connack } = await PacketClient.connect(t, at, subId, { clean: false });
  assert.equal(connack.returnCode, 0);
  await sub.subscribe('held/#', 1);
  const seen = new Set<string>();
  const acked = new Set<string>();
  const reader = (async () => {
    for (;;) {
      const p = await sub.next(T).catch(() => null);
      if (p === null) return;
      if (p.cmd !== 'publish') continue;
      const m = String(p.payload);
      seen.add(m);
      if (m.endsWith('-ack')) {
        sub.send({ cmd: 'puback', messageId: p.messageId! });
        acked.add(m);
      }
    }
  })();
  const pubs = new Map<'l' | 'r', MqttClient>();
  for (const name of which)
    pubs.set(name, await connect(t, first.port, onShard(name === 'l' ? 1 : 0, 'ow-pub')));
  const sent: string[] = [];
  const started = Date.now();
  const ackedAt = new Map<string, number>();
  const acks: Promise<void>[] = [];
  for (let i = 0; i < 30; i++)
    for (const [name, c] of pubs) {
      const m = `${name}${i}${i % 3 === 0 ? '-ack' : ''}`;
      sent.push(m);
      acks.push(
        publish(c, `held/${name}`, m, { qos: 1 }).then(() => void ackedAt.set(m, Date.now() - started)),
      );
    }
  await within(Promise.all(acks), 'every PUBACK', T / 2);
  // Kill -9 at once: whatever the broker has not committed by now is gone.
  first.p.child.kill('SIGKILL');
  assert.equal((await within(first.p.done, 'broker killed')).signal, 'SIGKILL');
  await reader;
  for (const m of sent) assert.ok(seen.has(m), `${m} reached the subscriber before the kill`);

  const second = await startProcess(t, dir, flags);
  const at2 = { port: second.port } as Broker;
  const again = await PacketClient.connect(t, at2, subId, { clean: false });
  assert.equal(again.connack.sessionPresent, true, 'session present after the restart [MQTT-3.2.2-2]');
  const pub = await connect(t, second.port, onShard(0, 'ow-sentinel'));
  // The sentinel is delivered after what the session had stored (queued behind it).
  await publish(pub, 'held/sentinel', 'sentinel', { qos: 1 });
  const got = new Set<string>();
  for (;;) {
    const p = await again.pc.expect('publish');
    again.pc.send({ cmd: 'puback', messageId: p.messageId! });
    const m = String(p.payload);
    if (m === 'sentinel') break;
    got.add(m);
  }
  const lost = sent.filter((m) => !acked.has(m) && !got.has(m));
  assert.deepEqual(lost, [], 'every acked message the subscriber had not acknowledged is delivered again');
  // The ones it acknowledged within the wait were never written (counted as such before the kill
  // is not observable any more; the restarted broker must not resend them as stored deliveries).
  for (const m of acked) assert.ok(!got.has(m) || m.startsWith('r'), `${m}: acknowledged, not stored`);
  // A message nobody acknowledged was acked to its publisher only once its record (or the outbox
  // entry carrying it) was written, after the wait [MQTT-4.3.2-?: the PUBACK means the broker
  // owns the message]; a local one the subscriber acknowledged went without waiting for a commit.
  for (const m of sent) {
    if (m.endsWith('-ack')) continue;
    assert.ok(ackedAt.get(m)! >= WAIT_MS - 50, `${m}: PUBACK after the held write (${ackedAt.get(m)} ms)`);
  }
  const fastLocal = sent.filter((m) => m.startsWith('l') && m.endsWith('-ack') && ackedAt.get(m)! < WAIT_MS);
  if (pubs.has('l'))
    assert.ok(
      fastLocal.length > 0,
      'local messages the subscriber acknowledged were acked before the wait ended',
    );
  second.p.child.kill('SIGTERM');
  assert.equal((await within(second.p.done, 'broker stopped')).code, 0);
}

test(
  'online_ack_wait: publisher and subscriber on one shard — a QoS 1 message acked while its delivery to a connected, not acknowledging persistent subscriber was held survives kill -9',
  {
    timeout: T,
  },
  (t) => heldThenKilled(t, ['l']),
);

test(
  'online_ack_wait: publisher on the other shard (held outbox entry, batch confirmed only once its held deliveries are done) — acked messages survive kill -9',
  {
    timeout: T,
  },
  (t) => heldThenKilled(t, ['r']),
);

test(
  'online_ack_wait: publishers on both shards — acked messages survive kill -9',
  {
    timeout: T,
  },
  (t) => heldThenKilled(t, ['l', 'r']),
);

/**
 * The held writes are counted: a subscriber that acknowledges everything at once gets its
 * deliveries neither put nor removed (slot 213), and the outbox entries of the batches carrying
 * them from the other shard are confirmed before they are written (slot 215); one that never
 * acknowledges has them written once the wait is over (slot 214).
 */
test('online_ack_wait: held deliveries acknowledged in time are never written, the others are written after the wait', {
  timeout: T,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-online-wait-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const p = await startProcess(t, dir, ['--durability.mode=sync', '--durability.online_ack_wait=5000']);
  const at = { port: p.port } as Broker;
  const { pc: fast } = await PacketClient.connect(t, at, onShard(1, 'ow-fast'), { clean: false });
  await fast.subscribe('fast/#', 1);
  const pub = await connect(t, p.port, onShard(0, 'ow-pub'));
  const reader = (async () => {
    for (let n = 0; n < 20; n++) {
      const m = await fast.expect('publish');
      fast.send({ cmd: 'puback', messageId: m.messageId! });
    }
  })();
  const started = Date.now();
  await Promise.all(Array.from({ length: 20 }, (_, i) => publish(pub, 'fast/x', `f${i}`, { qos: 1 })));
  await reader;
  assert.ok(Date.now() - started < 5000, 'acked on the subscriber’s PUBACKs, long before the wait is over');
  // Counted at the shards' next flush.
  await waitFor(
    async () => (await counter(p, 'emqx_ts_store_held_acked_total')) >= 20,
    'the held deliveries counted',
  );
  assert.equal(
    await counter(p, 'emqx_ts_store_held_acked_total'),
    20,
    'every delivery acknowledged while held',
  );
  assert.ok((await counter(p, 'emqx_ts_outbox_held_confirmed_total')) >= 1, 'outbox entries never written');
  assert.equal(await counter(p, 'emqx_ts_store_held_written_total'), 0, 'no held delivery written');

  // One that never acknowledges: its deliveries are written once the wait is over.
  const { pc: silent } = await PacketClient.connect(t, at, onShard(1, 'ow-silent'), { clean: false });
  await silent.subscribe('silent/#', 1);
  const t0 = Date.now();
  await Promise.all(Array.from({ length: 5 }, (_, i) => publish(pub, 'silent/x', `s${i}`, { qos: 1 })));
  assert.ok(Date.now() - t0 >= 5000 - 50, 'PUBACK after the held writes');
  await waitFor(
    async () => (await counter(p, 'emqx_ts_store_held_written_total')) >= 5,
    'the held writes counted',
  );
  p.p.child.kill('SIGTERM');
  assert.equal((await within(p.p.done, 'broker stopped')).code, 0);
});

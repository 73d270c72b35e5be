/**
 * What the fuzzer (test/fuzz/, docs/RELIABILITY.md) found, each reproduced over a real socket to
 * the real broker.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  assertBrokerServes,
  client,
  connectFrame,
  Inbox,
  idOnShard,
  mqttString,
  publish,
  RawClient,
  rawConnected,
  rawFrame,
  startBroker,
  subscribe,
  waitFor,
} from './helpers/broker.js';

const T = 60_000;

test('a client that sends FIN and stops reading, with output still queued, is closed at once and its will published (keep alive 0) [MQTT-3.1.2-8]', {
  timeout: T,
}, async (t) => {
  // Found by the fuzzer: streams written then half-closed by clients that do not read kept
  // their connection (Node ends our side but cannot flush it), and each delivery to them built a
  // write-after-end Error inside the socket (15 % of a shard's CPU under fan-out).
  const broker = await startBroker(t);
  const watcher = await client(t, broker, { clientId: idOnShard(broker, 1, 'half-watch') });
  const wills = new Inbox(watcher);
  await subscribe(watcher, 'will/half', 1);

  const victimId = idOnShard(broker, 0, 'half-victim');
  const victim = await rawConnected(t, broker, {
    clientId: victimId,
    keepalive: 0,
    will: { topic: 'will/half', payload: 'gone', qos: 1 },
  });
  victim.send(rawFrame(0x82, [0, 1], mqttString('flood/half'), [1]));
  assert.deepEqual([...(await victim.read(5))], [0x90, 3, 0, 1, 1]);
  // From here the victim reads nothing: 32 inflight × 512 KiB is more than loopback buffers take.
  victim.socket.pause();
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'half-pub') });
  const big = Buffer.alloc(512 * 1024, 0x61);
  for (let i = 0; i < 40; i++) await publish(pub, 'flood/half', big, { qos: 1 });
  const before = broker.counters.snapshot().peerClosed;
  victim.socket.end();

  const [will] = await wills.wait(1);
  assert.equal(will.topic, 'will/half');
  assert.equal(will.payload, 'gone');
  await waitFor(() => broker.counters.snapshot().peerClosed === before + 1, 'peer close counted');
  assert.equal(broker.counters.snapshot().shardRestarts, 0);
  await assertBrokerServes(t, broker);
});

test('a client that sends its packets and FIN at once still gets the replies written before the FIN was read', {
  timeout: T,
}, async (t) => {
  // Ending at the FIN must not cut off what was already written: CONNACK and PINGRESP flush.
  const broker = await startBroker(t);
  const raw = await RawClient.connect(t, broker.port);
  raw.socket.end(Buffer.concat([connectFrame({ clientId: 'fin-after-packets' }), Buffer.from([0xc0, 0])]));
  assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
  assert.deepEqual([...(await raw.read(2))], [0xd0, 0]);
  await raw.waitClosed();
});

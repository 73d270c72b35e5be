/**
 * Hardening (issue #9, item 8): a client that sends but never reads. Acks, PINGRESP and SUBACK
 * are written whatever the congestion, so without a cap its output would grow without bound in
 * the shard. Over mqtt.max_output_buffer the broker stops reading it (TCP pushes back on the
 * client); over force_shutdown.max_output_bytes it closes it. Real sockets, real broker.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  assertBrokerServes,
  mqttString,
  rawFrame,
  socketAfterConnect,
  startBroker,
  waitFor,
} from './helpers/broker.js';

const T = 90_000;
const MiB = 1024 * 1024;

/** 1 MiB of PINGREQs and SUBSCRIBEs (each answered: PINGRESP 2 bytes, SUBACK 5 bytes). */
function floodChunk(): Buffer {
  const sub = rawFrame(0x82, [0, 1], mqttString('f'), [0]); // 8 bytes
  const ping = Buffer.from([0xc0, 0]);
  const unit = Buffer.concat([sub, ...Array.from({ length: 28 }, () => ping)]); // 64 bytes
  return Buffer.concat(Array.from({ length: MiB / unit.length }, () => unit));
}

/** A raw client that sends CONNECT and then never reads a byte. */
const nonReader = socketAfterConnect;

test('a client flooding PINGREQ/SUBSCRIBE without reading is no longer read past mqtt.max_output_buffer, and is read again once it reads', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, {
    'node.shards': 1,
    'mqtt.output_high_watermark': 65536,
    'mqtt.max_output_buffer': 262144,
  });
  const sock = await nonReader(t, broker, 'never-reads');
  const chunk = floodChunk();
  const total = 16 * MiB;
  for (let sent = 0; sent < total; sent += chunk.length) sock.write(chunk);
  await waitFor(() => broker.counters.snapshot().outputReadPaused >= 1, 'reading paused');
  // Another client is served while the flooder is paused.
  await assertBrokerServes(t, broker);
  // Bounded: the broker took in (and so answered) at most what the kernel buffers on both sides
  // plus mqtt.max_output_buffer hold; the rest waits in the client, unsent.
  const read = broker.counters.snapshot().bytesReceived;
  t.diagnostic(`read ${read} bytes before pausing`);
  assert.ok(read < total / 2, `broker read ${read} of ${total} bytes from a client that never reads`);
  assert.ok(sock.writableLength > 0, 'the flooder has unsent bytes: TCP pushed back');
  // Once it reads, its output drains and the broker reads the rest.
  let got = 0;
  sock.on('data', (d: Buffer) => {
    got += d.length;
  });
  sock.resume();
  await waitFor(
    () => broker.counters.snapshot().bytesReceived >= total,
    'the rest read after drain',
    60_000,
  ).catch((err) => {
    throw new Error(
      `${err.message}: read ${broker.counters.snapshot().bytesReceived} of ${total}, client got ${got}`,
    );
  });
  assert.equal(broker.counters.snapshot().outputForceShutdown, 0);
  await assertBrokerServes(t, broker);
  assert.ok(got > 0);
});

test('past force_shutdown.max_output_bytes a client that never reads is closed and counted; others are served', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, {
    'mqtt.output_high_watermark': 16384,
    'mqtt.max_output_buffer': 4 * MiB,
    'force_shutdown.max_output_bytes': 65536,
  });
  const sock = await nonReader(t, broker, 'never-reads-2');
  // Not events.once: it rejects on the 'error' (a reset) that may come with the close.
  const closed = new Promise((resolve) => sock.once('close', resolve));
  const chunk = floodChunk();
  let writes = 0;
  // Sends until the broker closes it (bounded, so a broker that never closes fails the test).
  const pump = (): void => {
    while (!sock.destroyed && writes < 64 && sock.write(chunk)) writes++;
    if (!sock.destroyed && writes < 64) sock.once('drain', pump);
  };
  pump();
  await waitFor(() => broker.counters.snapshot().outputForceShutdown === 1, 'force shutdown counted');
  // The client sees the close (it reads nothing, so a reset or FIN is all it gets).
  sock.resume();
  await closed;
  await assertBrokerServes(t, broker);
  assert.equal(broker.counters.snapshot().shardRestarts, 0);
});

/**
 * Keep alive (MQTT 3.1.1 §3.1.2.10, §3.12): PINGREQ/PINGRESP, and the server closing a client
 * it has not heard from for 1.5 × its keep-alive [MQTT-3.1.2-24].
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import {
  brokerPool,
  client,
  connectFrame,
  Inbox,
  idOnShard,
  mqttString,
  RawClient,
  rawConnected,
  rawFrame,
  rawPing,
  readFrame,
  subscribe,
  waitFor,
} from './helpers/broker.js';

/** The file's brokers, stopped when its tests are done. */
const fileBroker = brokerPool();
let broker: Broker;
before(async () => {
  broker = await fileBroker({ 'node.shards': 2, 'mqtt.keepalive_multiplier': 1.5 });
});

// The tests wait on the broker's keep-alive clock, not on CPU: they run side by side.
describe('keep alive', { concurrency: true }, () => {
  test('PINGREQ gets PINGRESP [MQTT-3.12.4-1], also several in one write', async (t) => {
    const raw = await rawConnected(t, broker, { clientId: 'ping', keepalive: 60 });
    raw.send([0xc0, 0]);
    assert.deepEqual([...(await raw.read(2))], [0xd0, 0]);
    raw.send([0xc0, 0, 0xc0, 0, 0xc0, 0]);
    assert.deepEqual([...(await raw.read(6))], [0xd0, 0, 0xd0, 0, 0xd0, 0]);
    // mqtt.js relies on it too: a client with keepalive 1 s stays up through its own PINGREQs.
    const c = await client(t, broker, { clientId: 'ping-mqttjs', keepalive: 1 });
    await new Promise<void>((resolve, reject) => {
      c.once('packetreceive', (p) => (p.cmd === 'pingresp' ? resolve() : reject(new Error(`got ${p.cmd}`))));
      c.once('close', () => reject(new Error('closed')));
    });
  });

  test('a silent client with keepalive 1 s is disconnected after 1.5 × keepalive, and its will is published [MQTT-3.1.2-24], [MQTT-3.1.2-8]', async (t) => {
    const watcher = await client(t, broker, { clientId: idOnShard(broker, 0, 'ka-watch') });
    const inbox = new Inbox(watcher);
    await subscribe(watcher, 'ka/will', 1);
    const timeouts = broker.counters.snapshot().keepaliveTimeouts;
    const raw = await RawClient.connect(t, broker.port);
    const sentAt = performance.now();
    raw.send(
      connectFrame({
        clientId: idOnShard(broker, 1, 'ka-silent'),
        keepalive: 1,
        will: { topic: 'ka/will', payload: 'gone' },
      }),
    );
    assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
    await raw.waitClosed(15_000);
    const elapsed = performance.now() - sentAt;
    // The last packet (CONNECT) left here at sentAt, so the broker cannot have seen it later.
    assert.ok(elapsed >= 1400, `closed ${elapsed.toFixed(0)} ms after the last packet: not before 1.5 × 1 s`);
    assert.equal(raw.pending.length, 0, 'closed without sending anything (3.1.1 has no server DISCONNECT)');
    // (>=: the other tests of this file run concurrently and have their own timeouts)
    await waitFor(
      () => broker.counters.snapshot().keepaliveTimeouts > timeouts,
      'keep-alive timeout counted',
    );
    const [will] = await inbox.wait(1);
    assert.deepEqual(
      [will.topic, will.payload],
      ['ka/will', 'gone'],
      'closed as if the network failed: will sent',
    );
  });

  test('keepalive 0 turns the keep-alive check off (§3.1.2.10)', async (t) => {
    // Silent clients with keepalive 0, and on the same shard probes with keepalive 1 s: each probe
    // closed by the keep-alive sweep is a sweep that looked at the keepalive-0 client too.
    const idle = [0, 1].map((s) =>
      rawConnected(t, broker, { clientId: idOnShard(broker, s, 'ka0'), keepalive: 0 }),
    );
    const clients = await Promise.all(idle);
    const start = performance.now();
    for (let round = 0; round < 2; round++) {
      const probes = await Promise.all(
        [0, 1].map((s) =>
          rawConnected(t, broker, { clientId: idOnShard(broker, s, `ka0-probe${round}`), keepalive: 1 }),
        ),
      );
      await Promise.all(probes.map((p) => p.waitClosed(15_000)));
    }
    const silentFor = performance.now() - start;
    assert.ok(silentFor >= 2800, `silent for ${silentFor.toFixed(0)} ms (two 1.5 s keep-alive periods)`);
    for (const c of clients) {
      assert.equal(c.closed, false, 'keepalive 0 client still connected');
      await rawPing(c);
    }
  });

  test('packets from the client reset the keep-alive timer: PUBLISH (and PINGREQ) [MQTT-3.1.2-24], [MQTT-3.1.2-23]', async (t) => {
    const publisher = await rawConnected(t, broker, {
      clientId: idOnShard(broker, 0, 'ka-pub'),
      keepalive: 1,
    });
    const pinger = await rawConnected(t, broker, { clientId: idOnShard(broker, 1, 'ka-ping'), keepalive: 1 });
    const start = performance.now();
    let id = 0;
    // Traffic every 300 ms for 3.2 s: twice the 1.5 s limit, with no PINGREQ from the publisher.
    while (performance.now() - start < 3200) {
      id++;
      publisher.send(rawFrame(0x32, mqttString('ka/traffic'), [id >> 8, id & 0xff], 'x'));
      const ack = await readFrame(publisher);
      assert.deepEqual([ack.type, ack.body.readUInt16BE(0)], [4, id], 'PUBACK');
      await rawPing(pinger);
      await new Promise((r) => setTimeout(r, 300)); // pacing of the client's traffic, not a wait for the broker
    }
    assert.equal(
      publisher.closed || pinger.closed,
      false,
      'still connected after 3.2 s thanks to their traffic',
    );
    // Then silence: the keep-alive check does close them.
    const silentAt = performance.now();
    await Promise.all([publisher.waitClosed(15_000), pinger.waitClosed(15_000)]);
    const after = performance.now() - silentAt;
    assert.ok(after >= 1000, `closed ${after.toFixed(0)} ms after their last packet`);
  });
  test('bytes of an unfinished packet are not a Control Packet: a trickling client is still disconnected [MQTT-3.1.2-24]', async (t) => {
    const raw = await RawClient.connect(t, broker.port);
    const sentAt = performance.now();
    raw.send(connectFrame({ clientId: idOnShard(broker, 0, 'ka-trickle'), keepalive: 1 }));
    assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
    // A PUBLISH announcing 200 bytes, then one byte every 200 ms: never a whole packet.
    const partial = rawFrame(0x30, mqttString('ka/trickle'), Buffer.alloc(186, 0x2e));
    let i = 0;
    const trickle = setInterval(() => {
      if (i < partial.length - 1 && !raw.closed) raw.send(partial.subarray(i, ++i));
    }, 200);
    t.after(() => clearInterval(trickle));
    await raw.waitClosed(15_000);
    clearInterval(trickle);
    const elapsed = performance.now() - sentAt;
    assert.ok(elapsed >= 1400, `closed ${elapsed.toFixed(0)} ms after CONNECT, its last whole packet`);
    assert.ok(i > 5, `bytes kept coming (${i}) and did not keep the connection alive`);
  });
});

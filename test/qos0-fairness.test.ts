/**
 * QoS 0 fairness (issue #9 item 10). A QoS 0 publisher flooding a subscriber that keeps reading,
 * only slower, used to have most messages dropped at the subscriber's high-water mark. Now the
 * publisher is not read while the subscriber is congested (TCP pushes back on it), so such a
 * subscriber gets (nearly) everything; only a subscriber that takes nothing for
 * mqtt.slow_consumer_timeout has QoS 0 dropped, and then it holds nobody back. Raw sockets to a
 * real broker; completion is awaited on counters, never on time.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import { assertBrokerServes, idOnShard, startBroker, waitFor } from './helpers/broker.js';
import { mqttString, rawFrame, socketAfterConnect } from './helpers/raw.js';

const T = 180_000;
const PAYLOAD = Buffer.alloc(1024, 0x70);

/** Counts the PUBLISH frames (and SUBACKs) arriving on `s`, without reassembling frames. */
function countFrames(s: Socket): {
  publishes: number;
  subacks: number;
  onChunk: ((n: number) => void) | null;
} {
  const st = { publishes: 0, subacks: 0, onChunk: null as ((n: number) => void) | null };
  let skip = 0;
  let hdr: number[] = [];
  s.on('data', (d: Buffer) => {
    let i = 0;
    while (i < d.length) {
      if (skip > 0) {
        const k = Math.min(skip, d.length - i);
        skip -= k;
        i += k;
        continue;
      }
      hdr.push(d[i++]);
      if (hdr.length >= 2 && (hdr[hdr.length - 1] & 0x80) === 0) {
        let len = 0;
        for (let j = hdr.length - 1; j >= 1; j--) len = len * 128 + (hdr[j] & 0x7f);
        if (hdr[0] >> 4 === 3) st.publishes++;
        else if (hdr[0] === 0x90) st.subacks++;
        skip = len;
        hdr = [];
      }
    }
    st.onChunk?.(d.length);
  });
  s.resume();
  return st;
}

/** A subscriber to `topic` at QoS 0, counting what it gets; resolves after SUBACK. */
async function subscriber(t: { after: (fn: () => void) => void }, broker: Broker, id: string, topic: string) {
  const s = await socketAfterConnect(t, broker, id);
  const st = countFrames(s);
  s.write(rawFrame(0x82, [0, 1], mqttString(topic), [0]));
  await waitFor(() => st.subacks === 1, `${id} subscribed`);
  return { s, st };
}

/** Writes n QoS 0 PUBLISHes of 1 KiB to `topic` as fast as the socket takes them. */
async function flood(s: Socket, topic: string, n: number): Promise<void> {
  const frame = rawFrame(0x30, mqttString(topic), PAYLOAD);
  const per = 512;
  const batch = Buffer.concat(Array.from({ length: per }, () => frame));
  for (let sent = 0; sent < n; sent += per) {
    const b = n - sent >= per ? batch : batch.subarray(0, (n - sent) * frame.length);
    if (!s.write(b)) await once(s, 'drain');
  }
}

for (const sameShard of [false, true]) {
  test(`a subscriber that reads continuously but slower than a QoS 0 flood gets ≥ 90 % of it (publisher on ${sameShard ? 'the same shard' : 'another shard'})`, {
    timeout: T,
  }, async (t) => {
    const broker = await startBroker(t, { 'node.shards': 2 });
    // 24 MiB: far more than kernel buffers hold, and 1 KiB messages so that the publisher
    // outruns the reader even on a loaded machine.
    const N = 24_000;
    const topic = `fair/${sameShard}`;
    const sub = await subscriber(t, broker, idOnShard(broker, 0, 'fair-sub'), topic);
    // Reads about 4 MB/s: a read, then a pause as long as 4 MB/s takes for it.
    sub.st.onChunk = (n) => {
      sub.s.pause();
      setTimeout(() => sub.s.resume(), Math.ceil(n / 4000));
    };
    const pub = await socketAfterConnect(t, broker, idOnShard(broker, sameShard ? 0 : 1, 'fair-pub'));
    pub.resume();
    const before = broker.counters.snapshot();
    await flood(pub, topic, N);
    // Every message either reached the subscriber or was counted as dropped.
    await waitFor(
      () =>
        sub.st.publishes +
          broker.counters.snapshot().deliveryDroppedQos0Slow -
          before.deliveryDroppedQos0Slow >=
        N,
      'all delivered or dropped',
      150_000,
    ).catch((err) => {
      throw new Error(`${(err as Error).message}: got ${sub.st.publishes} of ${N}`);
    });
    const c = broker.counters.snapshot();
    const share = sub.st.publishes / N;
    t.diagnostic(
      `received ${sub.st.publishes} of ${N} (${(share * 100).toFixed(1)} %), publisher held ${c.publishersHeld - before.publishersHeld} times`,
    );
    assert.ok(share >= 0.9, `received ${(share * 100).toFixed(1)} % of the flood`);
    assert.ok(c.publishersHeld > before.publishersHeld, 'the publisher was held (back-pressure)');
    assert.equal(c.slowConsumers, before.slowConsumers, 'a subscriber that reads is not a slow consumer');
  });
}

test('a subscriber that stops reading has QoS 0 dropped after mqtt.slow_consumer_timeout and holds nobody back; another subscriber gets everything', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'node.shards': 2, 'mqtt.slow_consumer_timeout': 1 });
  const N = 40_000;
  const topic = 'fair/stopped';
  const stopped = await subscriber(t, broker, idOnShard(broker, 0, 'stopped-sub'), topic);
  stopped.s.pause();
  const reader = await subscriber(t, broker, idOnShard(broker, 1, 'reading-sub'), topic);
  const pub = await socketAfterConnect(t, broker, idOnShard(broker, 1, 'stopped-pub'));
  pub.resume();
  await flood(pub, topic, N);
  await waitFor(() => reader.st.publishes >= N, 'the reading subscriber got all', 150_000).catch((err) => {
    throw new Error(`${(err as Error).message}: got ${reader.st.publishes} of ${N}`);
  });
  const c = broker.counters.snapshot();
  t.diagnostic(
    `stopped subscriber: ${c.deliveryDroppedQos0Slow} dropped; publisher held ${c.publishersHeld} times; slow consumers ${c.slowConsumers}`,
  );
  assert.equal(c.slowConsumers, 1, 'the stopped subscriber became a slow consumer');
  assert.ok(c.deliveryDroppedQos0Slow > N / 2, 'QoS 0 to it was dropped');
  // Its holds ended with the timeout: the publisher is read again (others are served).
  await assertBrokerServes(t, broker);
  // It reads again: after its drain it is no longer slow (and its buffered messages arrive).
  const got = stopped.st.publishes;
  stopped.s.resume();
  await waitFor(() => stopped.st.publishes > got, 'the stopped subscriber reads again');
});

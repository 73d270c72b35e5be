/**
 * Limits EMQX has (issue #9): each option bounds what one client can make the broker hold, and
 * every refusal is counted. Real broker threads, real TCP clients.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  brokerPool,
  client,
  connectFrame,
  connectFrame5,
  endClient,
  Inbox,
  idOnShard,
  props5,
  publish,
  RawClient,
  rawConnect5,
  rawFrame,
  readFrame,
  subscribe,
  waitFor,
} from './helpers/broker.js';

const T = 60_000;
const pool = brokerPool();

test('retainer.max_retained_messages and max_payload_size: beyond them a retained message is routed, not stored, and counted', {
  timeout: T,
}, async (t) => {
  const broker = await pool({ 'retainer.max_retained_messages': 2, 'retainer.max_payload_size': 10 });
  const before = broker.counters.snapshot().retainedRefused;
  const live = await client(t, broker, { clientId: 'ret-live' });
  const liveInbox = new Inbox(live);
  await subscribe(live, 'ret/#', 1);
  const pub = await client(t, broker, { clientId: 'ret-pub' });
  // QoS 1: each PUBACK comes after main has decided on storing it.
  await publish(pub, 'ret/1', 'one', { qos: 1, retain: true });
  await publish(pub, 'ret/2', 'two', { qos: 1, retain: true });
  await publish(pub, 'ret/3', 'three', { qos: 1, retain: true }); // a third topic: not stored
  await publish(pub, 'ret/1', 'too large!!', { qos: 1, retain: true }); // 11 bytes: not stored
  await publish(pub, 'ret/2', 'two again', { qos: 1, retain: true }); // replacing one is fine
  // All five were routed to the live subscriber.
  const got = await liveInbox.wait(5);
  assert.deepEqual(
    got.map((m) => m.payload),
    ['one', 'two', 'three', 'too large!!', 'two again'],
  );
  assert.equal(broker.counters.snapshot().retainedRefused, before + 2);
  assert.equal(broker.retained.size, 2);
  // A new subscriber gets what was stored: ret/1 kept its old message [MQTT-3.3.1-6].
  const late = await client(t, broker, { clientId: 'ret-late' });
  const lateInbox = new Inbox(late);
  await subscribe(late, 'ret/#', 1);
  const retained = (await lateInbox.wait(2)).map((m) => `${m.topic}=${m.payload}`).sort();
  assert.deepEqual(retained, ['ret/1=one', 'ret/2=two again']);
});

test('MQTT 5 Session Expiry Interval is capped by mqtt.session_expiry_interval and CONNACK says so [MQTT-3.2.2-?]', {
  timeout: T,
}, async (t) => {
  const broker = await pool();
  // 0xFFFFFFFF asks for "never"; the server's maximum (default 7200 s) applies and is returned.
  const { connack } = await rawConnect5(t, broker, {
    clientId: 'exp-forever',
    clean: true,
    props: [[0x11, 0xffffffff]],
  });
  assert.equal(connack.reasonCode, 0);
  assert.equal(connack.properties?.sessionExpiryInterval, 7200);
  assert.equal(broker.config['mqtt.session_expiry_interval'], 7200);
  // A value within the cap is the client's own: no property.
  const ok = await rawConnect5(t, broker, { clientId: 'exp-60', props: [[0x11, 60]] });
  assert.equal(ok.connack.properties?.sessionExpiryInterval, undefined);
});

test('listener.max_connections holds across shards: CONNACK 0x03 (MQTT 3) / 0x97 (MQTT 5) when full, counted', {
  timeout: T,
}, async (t) => {
  const broker = await pool({ 'listener.max_connections': 3 });
  const before = broker.counters.snapshot().connectionsRefusedMax;
  // Three connections on both shards fill the listener.
  const a = await client(t, broker, { clientId: idOnShard(broker, 0, 'max-a') });
  await client(t, broker, { clientId: idOnShard(broker, 1, 'max-b') });
  await client(t, broker, { clientId: idOnShard(broker, 0, 'max-c') });
  for (const shard of [0, 1]) {
    const raw = await RawClient.connect(t, broker.port);
    raw.send(connectFrame({ clientId: idOnShard(broker, shard, 'max-v3') }));
    assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 3]);
    await raw.waitClosed();
    const raw5 = await RawClient.connect(t, broker.port);
    raw5.send(connectFrame5({ clientId: idOnShard(broker, shard, 'max-v5') }));
    const f = await readFrame(raw5);
    assert.equal(f.type, 2);
    assert.equal(f.body[1], 0x97);
    await raw5.waitClosed();
  }
  assert.equal(broker.counters.snapshot().connectionsRefusedMax, before + 4);
  // A closed connection frees its place.
  await endClient(a);
  await waitFor(() => broker.counters.snapshot().connections === 2, 'two connections');
  await client(t, broker, { clientId: idOnShard(broker, 1, 'max-d') });
});

test('MQTT 5 DISCONNECT Session Expiry: judged against the CONNECT value, not the server-capped one [MQTT-3.14.2-2]', {
  timeout: T,
}, async (t) => {
  const broker = await pool({ 'mqtt.session_expiry_interval': 0 });
  const before = broker.counters.snapshot().protocolErrors;
  // Asked for 60 in CONNECT, capped to 0 by the server: a non-zero value at DISCONNECT is allowed.
  const asked = await rawConnect5(t, broker, { clientId: 'exp-asked', props: [[0x11, 60]] });
  assert.equal(asked.connack.properties?.sessionExpiryInterval, 0);
  asked.raw.send(rawFrame(0xe0, [0], props5([[0x11, 30]])));
  await asked.raw.waitClosed();
  assert.equal(asked.raw.pending.length, 0, 'no DISCONNECT from the server');
  // Zero (absent) in CONNECT: a non-zero value at DISCONNECT is a Protocol Error.
  const zero = await rawConnect5(t, broker, { clientId: 'exp-zero' });
  zero.raw.send(rawFrame(0xe0, [0], props5([[0x11, 30]])));
  const f = await readFrame(zero.raw);
  assert.equal(f.type, 14);
  assert.equal(f.body[0], 0x82);
  await zero.raw.waitClosed();
  assert.equal(broker.counters.snapshot().protocolErrors, before + 1);
});

/**
 * `$SYS` topics as EMQX publishes them, received by real MQTT subscribers: the periodic broker
 * information, stats and metrics, the client connected/disconnected events, and that `#` does
 * not match them [MQTT-4.7.2-1].
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  client,
  closed,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  waitForMessage,
} from './helpers/broker.js';

const NODE = 'emqx-ts@127.0.0.1';
const SYS = `$SYS/brokers/${NODE}`;

test('periodic $SYS: brokers, version, sysdescr (retained), uptime, datetime, stats, metrics', async (t) => {
  const broker = await startBroker(t, {
    'sys_topics.sys_msg_interval': 0.2,
    'sys_topics.sys_heartbeat_interval': 0.2,
  });
  const sys = await client(t, broker, { clientId: idOnShard(broker, 0, 'sys-sub') });
  const inbox = new Inbox(sys);
  await subscribe(sys, ['$SYS/#'], 0);

  const brokers = await waitForMessage(inbox, (m) => m.topic === '$SYS/brokers');
  assert.equal(brokers.payload, NODE);
  const version = await waitForMessage(inbox, (m) => m.topic === `${SYS}/version`);
  assert.equal(version.payload, broker.version);
  // The first copy may be live (RETAIN 0) if it was published after this SUBSCRIBE; once one was
  // published it is stored, so a later subscriber gets it at once with RETAIN 1 [MQTT-3.3.1-8].
  const lateSys = await client(t, broker, { clientId: idOnShard(broker, 1, 'sys-late') });
  const lateSysInbox = new Inbox(lateSys);
  await subscribe(lateSys, [`${SYS}/version`], 0);
  const stored = await waitForMessage(lateSysInbox, (m) => m.topic === `${SYS}/version` && m.retain);
  assert.equal(stored.payload, broker.version, 'version is retained: a new subscriber gets it at once');
  // Gone again, so that the stats below count only this test's other clients.
  await new Promise<void>((resolve) => lateSys.end(false, {}, () => resolve()));
  assert.equal((await waitForMessage(inbox, (m) => m.topic === `${SYS}/sysdescr`)).payload, 'emqx-ts');

  const up1 = await waitForMessage(inbox, (m) => m.topic === `${SYS}/uptime`);
  assert.match(up1.payload, /^\d+$/, 'uptime in ms');
  const dt = await waitForMessage(inbox, (m) => m.topic === `${SYS}/datetime`);
  assert.match(dt.payload, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$/, 'RFC 3339');
  assert.ok(Math.abs(Date.parse(dt.payload) - Date.now()) < 60_000);
  const up2 = await waitForMessage(inbox, (m) => m.topic === `${SYS}/uptime` && m !== up1);
  assert.ok(Number(up2.payload) > Number(up1.payload), 'uptime grows every heartbeat');

  // Stats and metrics, one topic each with dots as levels; values follow the traffic.
  const pub = await client(t, broker, { clientId: idOnShard(broker, 1, 'sys-pub') });
  await publish(pub, 'some/topic', 'x', { qos: 1 });
  const conns = await waitForMessage(
    inbox,
    (m) => m.topic === `${SYS}/stats/connections/count` && m.payload === '2',
  );
  assert.equal(conns.retain, false);
  await waitForMessage(inbox, (m) => m.topic === `${SYS}/stats/subscriptions/count` && m.payload === '1');
  await waitForMessage(
    inbox,
    (m) => m.topic === `${SYS}/stats/live_connections/max` && Number(m.payload) >= 2,
  );
  await waitForMessage(inbox, (m) => m.topic === `${SYS}/metrics/messages/received` && m.payload === '1');
  await waitForMessage(
    inbox,
    (m) => m.topic === `${SYS}/metrics/messages/qos1/received` && m.payload === '1',
  );
  await waitForMessage(
    inbox,
    (m) => m.topic === `${SYS}/metrics/packets/connect/received` && Number(m.payload) >= 2,
  );
  await waitForMessage(
    inbox,
    (m) => m.topic === `${SYS}/metrics/messages/dropped/no_subscribers` && m.payload === '1',
  );

  // A later subscriber gets the retained ones from the store.
  const late = await client(t, broker, { clientId: 'sys-late' });
  const lateInbox = new Inbox(late);
  await subscribe(late, `${SYS}/version`, 0);
  const v = await waitForMessage(lateInbox, (m) => m.topic === `${SYS}/version`);
  assert.equal(v.retain, true);

  // The broker's own $SYS messages are never counted as dropped, although most topics have no
  // subscriber on this broker other than `sys-sub`... and `late` only wants `version`.
  assert.equal(broker.counters.snapshot().messagesDroppedNoSubscribers, 1, 'only some/topic');
});

test("'#' and '+' do not match $SYS topics; an explicit $SYS filter does", async (t) => {
  const broker = await startBroker(t, {
    'sys_topics.sys_msg_interval': 0.2,
    'sys_topics.sys_heartbeat_interval': 0.2,
  });
  const all = await client(t, broker, { clientId: 'hash-all' });
  const allInbox = new Inbox(all);
  await subscribe(all, ['#', '+/brokers/#', '+/+'], 0);
  const sys = await client(t, broker, { clientId: 'hash-sys' });
  const sysInbox = new Inbox(sys);
  await subscribe(sys, '$SYS/brokers/+/uptime', 0);
  // Two heartbeats reach the explicit subscriber…
  await sysInbox.wait(2);
  // …and a marker published after them reaches '#' as the first and only message.
  await publish(sys, 'marker/1', 'm', { qos: 1 });
  const got = await allInbox.wait(1);
  await waitForMessage(allInbox, (m) => m.topic === 'marker/1');
  assert.ok(
    got.every((m) => !m.topic.startsWith('$')),
    `# got $ topics: ${got.map((m) => m.topic).join(', ')}`,
  );
});

test('client connected / disconnected events with EMQX fields', async (t) => {
  const broker = await startBroker(t);
  const watcher = await client(t, broker, { clientId: idOnShard(broker, 0, 'ev-watch') });
  const inbox = new Inbox(watcher);
  await subscribe(
    watcher,
    [`$SYS/brokers/+/clients/+/connected`, `$SYS/brokers/+/clients/+/disconnected`],
    0,
  );

  // On the other shard: the event crosses shards like any message.
  const id = idOnShard(broker, 1, 'ev-client');
  const c = await client(t, broker, { clientId: id, username: 'alice', keepalive: 42, clean: true });
  const conn = await waitForMessage(inbox, (m) => m.topic === `${SYS}/clients/${id}/connected`);
  const ev = JSON.parse(conn.payload);
  assert.equal(ev.clientid, id);
  assert.equal(ev.username, 'alice');
  assert.equal(ev.ipaddress, '127.0.0.1');
  assert.equal(ev.sockport, broker.port);
  assert.equal(ev.proto_name, 'MQTT');
  assert.equal(ev.proto_ver, 4);
  assert.equal(ev.keepalive, 42);
  assert.equal(ev.clean_start, true);
  assert.equal(ev.expiry_interval, 0);
  assert.equal(ev.protocol, 'mqtt');
  assert.ok(Math.abs(ev.connected_at - Date.now()) < 60_000 && ev.ts >= ev.connected_at);
  assert.equal(conn.retain, false);
  assert.equal(conn.qos, 0);

  c.end();
  const disc = JSON.parse(
    (await waitForMessage(inbox, (m) => m.topic === `${SYS}/clients/${id}/disconnected`)).payload,
  );
  assert.equal(disc.reason, 'normal', 'DISCONNECT');
  assert.equal(disc.clientid, id);
  assert.ok(disc.disconnected_at >= disc.connected_at);

  const rude = await client(t, broker, { clientId: 'ev-rude' });
  rude.stream.destroy();
  await closed(rude);
  const rudeEv = JSON.parse(
    (await waitForMessage(inbox, (m) => m.topic === `${SYS}/clients/ev-rude/disconnected`)).payload,
  );
  assert.equal(rudeEv.reason, 'sock_closed');
});

test('client events can be switched off', async (t) => {
  const broker = await startBroker(t, {
    'sys_topics.sys_event_messages.client_connected': false,
    'sys_topics.sys_event_messages.client_disconnected': false,
  });
  const watcher = await client(t, broker, { clientId: 'off-watch' });
  const inbox = new Inbox(watcher);
  await subscribe(watcher, ['$SYS/brokers/+/clients/#', 'marker'], 0);
  const c = await client(t, broker, { clientId: 'off-client' });
  c.end();
  await closed(c);
  // The marker goes through the same routing after both events would have been published.
  const other = await client(t, broker, { clientId: 'off-marker' });
  await publish(other, 'marker', 'm', { qos: 1 });
  const got = await inbox.wait(1);
  await waitForMessage(inbox, (m) => m.topic === 'marker');
  assert.deepEqual(
    got.map((m) => m.topic),
    ['marker'],
  );
});

/**
 * Prometheus metrics over real HTTP, driven by real MQTT traffic: every EMQX metric the issue
 * lists is checked to move by exactly what each action should move it by. Packet-level clients
 * (PacketClient) keep the traffic exact: nothing is sent that the test did not write, and a
 * PINGREQ round trip tells when the broker has handled what came before.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Broker } from '../src/broker/broker.js';
import { connectPacket, idOnShard, PacketClient, RawClient, startBroker, waitFor } from './helpers/broker.js';
import { api, httpGet, parsePrometheus, type Scrape, scrape } from './helpers/ops.js';

type Expect = Record<string, number | '>0'>;

/**
 * Runs `action`, then waits until every listed series has moved by exactly the expected amount
 * (counters of a close or a cross-shard delivery settle asynchronously), and returns the scrape.
 */
async function step(
  broker: Broker,
  what: string,
  action: () => Promise<void>,
  expected: Expect,
): Promise<Scrape> {
  const before = await scrape(broker);
  await action();
  let after = await scrape(broker);
  const moved = (s: Scrape, name: string) => s.get(name) - before.get(name);
  const ok = (s: Scrape) =>
    Object.entries(expected).every(([name, d]) => (d === '>0' ? moved(s, name) > 0 : moved(s, name) === d));
  const deadline = Date.now() + 20_000; // a hang guard (loaded CI), not a timing assertion
  while (!ok(after) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    after = await scrape(broker);
  }
  for (const [name, d] of Object.entries(expected)) {
    if (d === '>0')
      assert.ok(moved(after, name) > 0, `${what}: ${name} should move, moved ${moved(after, name)}`);
    else assert.equal(moved(after, name), d, `${what}: ${name}`);
  }
  return after;
}

const ping = { emqx_packets_pingreq_received: 1, emqx_packets_pingresp_sent: 1 };

test('every listed EMQX metric moves when its event happens', async (t) => {
  const broker = await startBroker(t, {
    'mqtt.max_mqueue_len': 2,
    'mqtt.max_awaiting_rel': 2,
    'mqtt.await_rel_timeout': 1,
  });
  const subId = idOnShard(broker, 0, 'm-sub');
  const pubId = idOnShard(broker, 1, 'm-pub');
  let sub!: PacketClient;
  let pub!: PacketClient;

  await step(
    broker,
    'connect',
    async () => {
      sub = (await PacketClient.connect(t, broker, subId)).pc;
    },
    {
      emqx_packets_connect: 1,
      emqx_client_connect: 1,
      emqx_packets_connack_sent: 1,
      emqx_client_connack: 1,
      emqx_client_connected: 1,
      emqx_session_created: 1,
      emqx_connections_count: 1,
      emqx_live_connections_count: 1,
      emqx_sessions_count: 1,
      emqx_packets_received: 1,
      emqx_packets_sent: 1,
      emqx_bytes_received: '>0',
      emqx_bytes_sent: 4,
      'emqx_ts_shard_connections{shard="0"}': 1,
      'emqx_ts_shard_sessions{shard="0"}': 1,
      emqx_ts_handoffs_total: 1,
      emqx_ts_handoff_latency_seconds_count: 1,
      'emqx_ts_handoff_latency_seconds_bucket{le="+Inf"}': 1,
    },
  );

  const s = await step(
    broker,
    'subscribe (one good filter, one refused)',
    async () => {
      sub.send({
        cmd: 'subscribe',
        messageId: 1,
        subscriptions: [
          { topic: 'm/#', qos: 2 },
          { topic: 'bad/#/filter', qos: 0 },
        ],
      });
      const suback = await sub.expect('suback');
      assert.deepEqual(suback.granted, [2, 0x80]);
    },
    {
      emqx_packets_subscribe_received: 1,
      emqx_client_subscribe: 1,
      emqx_packets_subscribe_error: 1,
      emqx_packets_suback_sent: 1,
      emqx_subscriptions_count: 1,
      emqx_suboptions_count: 1,
      emqx_subscribers_count: 1,
      emqx_topics_count: 1,
    },
  );
  for (const name of ['connections', 'live_connections', 'sessions', 'topics', 'subscriptions', 'retained']) {
    assert.ok(s.get(`emqx_${name}_max`) >= s.get(`emqx_${name}_count`), `${name}_max >= count`);
  }

  pub = (await PacketClient.connect(t, broker, pubId)).pc;

  await step(
    broker,
    'QoS 0 across shards',
    async () => {
      pub.send({ cmd: 'publish', topic: 'm/a', payload: 'zero', qos: 0, retain: false, dup: false });
      const p = await sub.expect('publish');
      assert.equal(p.qos, 0);
      await pub.ping();
    },
    {
      emqx_messages_received: 1,
      emqx_messages_qos0_received: 1,
      emqx_packets_publish_received: 1,
      emqx_messages_publish: 1,
      emqx_messages_sent: 1,
      emqx_messages_qos0_sent: 1,
      emqx_packets_publish_sent: 1,
      emqx_messages_delivered: 1,
      emqx_ts_cross_shard_messages_total: 1,
      emqx_ts_cross_shard_batches_total: 1,
      ...ping,
    },
  );

  await step(
    broker,
    'QoS 1',
    async () => {
      pub.send({
        cmd: 'publish',
        topic: 'm/a',
        payload: 'one',
        qos: 1,
        messageId: 1,
        retain: false,
        dup: false,
      });
      await pub.expect('puback');
      const p = await sub.expect('publish');
      assert.equal(p.qos, 1);
      sub.send({ cmd: 'puback', messageId: p.messageId });
      await sub.ping();
    },
    {
      emqx_messages_qos1_received: 1,
      emqx_packets_puback_sent: 1,
      emqx_messages_qos1_sent: 1,
      emqx_packets_puback_received: 1,
      emqx_messages_acked: 1,
      ...ping,
    },
  );

  await step(
    broker,
    'QoS 2 both ways',
    async () => {
      pub.send({
        cmd: 'publish',
        topic: 'm/a',
        payload: 'two',
        qos: 2,
        messageId: 2,
        retain: false,
        dup: false,
      });
      await pub.expect('pubrec');
      pub.send({ cmd: 'pubrel', messageId: 2 });
      await pub.expect('pubcomp');
      const p = await sub.expect('publish');
      assert.equal(p.qos, 2);
      sub.send({ cmd: 'pubrec', messageId: p.messageId });
      await sub.expect('pubrel');
      sub.send({ cmd: 'pubcomp', messageId: p.messageId });
      await sub.ping();
    },
    {
      emqx_messages_qos2_received: 1,
      emqx_packets_pubrec_sent: 1,
      emqx_packets_pubrel_received: 1,
      emqx_packets_pubcomp_sent: 1,
      emqx_messages_qos2_sent: 1,
      emqx_packets_pubrec_received: 1,
      emqx_packets_pubrel_sent: 1,
      emqx_packets_pubcomp_received: 1,
      emqx_messages_acked: 1,
      ...ping,
    },
  );

  await step(
    broker,
    'acks for unknown packet ids',
    async () => {
      pub.send({ cmd: 'puback', messageId: 999 });
      pub.send({ cmd: 'pubrec', messageId: 998 });
      pub.send({ cmd: 'pubcomp', messageId: 997 });
      pub.send({ cmd: 'pubrel', messageId: 996 });
      const before = await pub.ping();
      assert.deepEqual(
        before.map((p) => p.cmd),
        ['pubrel', 'pubcomp'],
      );
    },
    {
      emqx_packets_puback_missed: 1,
      emqx_packets_pubrec_missed: 1,
      emqx_packets_pubcomp_missed: 1,
      emqx_packets_pubrel_missed: 1,
      emqx_messages_acked: 0,
      ...ping,
    },
  );

  await step(
    broker,
    'QoS 2 id resent while awaiting PUBREL, then never released',
    async () => {
      const p = {
        cmd: 'publish',
        topic: 'm/b',
        payload: 'again',
        qos: 2,
        messageId: 50,
        retain: false,
      } as const;
      pub.send({ ...p, dup: false });
      await pub.expect('pubrec');
      pub.send({ ...p, dup: true });
      await pub.expect('pubrec');
      const got = await sub.expect('publish');
      sub.send({ cmd: 'pubrec', messageId: got.messageId });
      await sub.expect('pubrel');
      sub.send({ cmd: 'pubcomp', messageId: got.messageId });
      await sub.ping();
      // No PUBREL from pub: after mqtt.await_rel_timeout (1 s here) the id is dropped.
    },
    {
      emqx_packets_publish_inuse: 1,
      emqx_messages_received: 2,
      emqx_messages_sent: 1,
      emqx_messages_dropped_expired: 1,
    },
  );

  await step(
    broker,
    'no subscribers',
    async () => {
      pub.send({ cmd: 'publish', topic: 'nobody/here', payload: 'x', qos: 0, retain: false, dup: false });
      await pub.ping();
    },
    { emqx_messages_dropped: 1, emqx_messages_dropped_no_subscribers: 1, ...ping },
  );

  await step(
    broker,
    'retained',
    async () => {
      pub.send({
        cmd: 'publish',
        topic: 'r/1',
        payload: 'kept',
        qos: 1,
        messageId: 3,
        retain: true,
        dup: false,
      });
      await pub.expect('puback');
    },
    { emqx_messages_retained: 1, emqx_retained_count: 1, emqx_messages_dropped_no_subscribers: 1 },
  );

  // A persistent session, offline, with a queue of 2 (mqtt.max_mqueue_len).
  const { pc: offline } = await PacketClient.connect(t, broker, 'm-offline', { clean: false });
  await offline.subscribe('q/1', 1);
  offline.send({ cmd: 'disconnect' });
  await offline.waitClosed();
  await step(
    broker,
    'session queue full',
    async () => {
      for (let i = 0; i < 3; i++) {
        pub.send({
          cmd: 'publish',
          topic: 'q/1',
          payload: `q${i}`,
          qos: 1,
          messageId: 10 + i,
          retain: false,
          dup: false,
        });
        await pub.expect('puback');
      }
    },
    {
      emqx_delivery_dropped_queue_full: 1,
      emqx_delivery_dropped: 1,
      emqx_messages_sent: 0,
      emqx_connections_count: 0,
    },
  );
  const afterOffline = await scrape(broker);
  assert.equal(
    afterOffline.get('emqx_connections_count') - afterOffline.get('emqx_live_connections_count'),
    1,
    'an offline persistent session counts as a connection, not a live one (as EMQX)',
  );

  await step(
    broker,
    'PUBLISH with a wildcard topic',
    async () => {
      const { pc: bad } = await PacketClient.connect(t, broker, 'm-bad');
      bad.send({ cmd: 'publish', topic: 'bad/#', payload: 'x', qos: 0, retain: false, dup: false });
      await bad.waitClosed();
    },
    { emqx_packets_publish_error: 1, emqx_client_disconnected: 1, emqx_ts_protocol_errors_total: 1 },
  );

  await step(
    broker,
    'too many QoS 2 awaiting PUBREL',
    async () => {
      const { pc: flood } = await PacketClient.connect(t, broker, 'm-flood');
      for (let id = 1; id <= 3; id++) {
        flood.send({
          cmd: 'publish',
          topic: 'f/1',
          payload: 'x',
          qos: 2,
          messageId: id,
          retain: false,
          dup: false,
        });
      }
      await flood.waitClosed();
    },
    { emqx_packets_publish_dropped: 1, emqx_delivery_dropped: 0, emqx_messages_qos2_received: 3 },
  );

  await step(
    broker,
    'unsubscribe',
    async () => {
      sub.send({ cmd: 'unsubscribe', messageId: 7, unsubscriptions: ['m/#'] });
      await sub.expect('unsuback');
    },
    {
      emqx_packets_unsubscribe_received: 1,
      emqx_client_unsubscribe: 1,
      emqx_packets_unsuback_sent: 1,
      emqx_subscriptions_count: -1,
      emqx_topics_count: -1,
    },
  );

  await step(
    broker,
    'DISCONNECT of a clean session',
    async () => {
      sub.send({ cmd: 'disconnect' });
      await sub.waitClosed();
    },
    {
      emqx_packets_disconnect_received: 1,
      emqx_client_disconnected: 1,
      emqx_session_terminated: 1,
      emqx_session_discarded: 0,
      emqx_live_connections_count: -1,
      emqx_connections_count: -1,
      emqx_sessions_count: -1,
      emqx_live_connections_max: 0,
      'emqx_ts_shard_connections{shard="0"}': -1,
    },
  );

  // Session lifecycle: created, resumed, taken over, discarded.
  let p1!: PacketClient;
  await step(
    broker,
    'resume',
    async () => {
      const first = await PacketClient.connect(t, broker, 'm-p1', { clean: false });
      first.pc.send({ cmd: 'disconnect' });
      await first.pc.waitClosed();
      const again = await PacketClient.connect(t, broker, 'm-p1', { clean: false });
      assert.equal(again.connack.sessionPresent, true);
      p1 = again.pc;
    },
    {
      emqx_session_created: 1,
      emqx_session_resumed: 1,
      emqx_client_connected: 2,
      emqx_client_disconnected: 1,
    },
  );
  await step(
    broker,
    'takeover',
    async () => {
      const second = await PacketClient.connect(t, broker, 'm-p1', { clean: false });
      await p1.waitClosed();
      p1 = second.pc;
    },
    { emqx_session_takenover: 1, emqx_session_resumed: 1, emqx_session_created: 0 },
  );
  await step(
    broker,
    'clean start discards the session',
    async () => {
      p1.send({ cmd: 'disconnect' });
      await p1.waitClosed();
      const clean = await PacketClient.connect(t, broker, 'm-p1', { clean: true });
      assert.equal(clean.connack.sessionPresent, false);
    },
    { emqx_session_discarded: 1, emqx_session_created: 1, emqx_session_terminated: 0 },
  );

  await step(
    broker,
    'CONNACK refusal',
    async () => {
      const raw = await RawClient.connect(t, broker.port);
      raw.send(connectPacket('', { clean: false }));
      const connack = await raw.read(4);
      assert.deepEqual([...connack], [0x20, 2, 0, 2], 'identifier rejected');
      await raw.waitClosed();
    },
    {
      emqx_packets_connect: 1,
      emqx_packets_connack_sent: 1,
      emqx_packets_connack_error: 1,
      emqx_packets_connack_auth_error: 0,
      emqx_ts_connect_rejected_total: 1,
    },
  );

  await step(
    broker,
    'a shard crashes and restarts',
    async () => {
      broker.supervisor.post(1, { t: 'crash' });
      await waitFor(() => !broker.supervisor.shards[1].ready, 'shard 1 down');
      await waitFor(() => broker.supervisor.allReady, 'shard 1 back');
    },
    { emqx_ts_shard_restarts_total: 1 },
  );
});

test('exposition: types, per-shard series, both paths, auth on the API port', async (t) => {
  const broker = await startBroker(t);
  const m = await scrape(broker);
  assert.equal(m.types.get('emqx_messages_received'), 'counter');
  assert.equal(m.types.get('emqx_connections_count'), 'gauge');
  assert.equal(m.types.get('emqx_ts_handoff_latency_seconds'), 'histogram');
  assert.ok(
    ![...m.values.keys()].some((k) => /^emqx_(messages|packets|bytes)_\w+_total\b/.test(k)),
    'no _total',
  );
  for (const shard of ['0', '1']) {
    const elu = m.get(`emqx_ts_shard_event_loop_utilization{shard="${shard}"}`);
    assert.ok(elu >= 0 && elu <= 1, `ELU ${elu}`);
    assert.equal(m.get(`emqx_ts_shard_up{shard="${shard}"}`), 1);
  }
  assert.ok(m.values.has('process_cpu_user_seconds_total'), 'process metrics of the main thread');

  // EMQX's path on the metrics port, and on the REST API port (open by default, as EMQX).
  const emqxPath = await scrape(broker, '/api/v5/prometheus/stats');
  assert.deepEqual([...emqxPath.types.keys()].sort(), [...m.types.keys()].sort());
  const viaApi = await api(broker, 'GET', '/prometheus/stats', { auth: null });
  assert.equal(viaApi.status, 200);
  assert.ok(parsePrometheus(viaApi.text).values.has('emqx_messages_received'));

  const locked = await startBroker(t, { 'prometheus.enable_basic_auth': true });
  assert.equal((await api(locked, 'GET', '/prometheus/stats', { auth: null })).status, 401);
  assert.equal((await api(locked, 'GET', '/prometheus/stats')).status, 200);
  assert.equal((await httpGet(locked.metricsPort, '/metrics')).status, 200, 'the metrics port stays open');
  assert.equal((await httpGet(locked.metricsPort, '/nope')).status, 404);
});

test('CPU per thread: main and every shard, within what the process used', async (t) => {
  const broker = await startBroker(t);
  // Each thread records its OS thread id with its first memory sample (about a second in).
  const threads = ['main', 'shard0', 'shard1'];
  let m = await scrape(broker);
  for (const deadline = Date.now() + 10_000; ; ) {
    if (threads.every((th) => m.values.has(`emqx_ts_thread_cpu_seconds{thread="${th}"}`))) break;
    if (Date.now() > deadline)
      assert.fail(
        `no per-thread CPU series: ${[...m.values.keys()].filter((k) => k.includes('thread_cpu'))}`,
      );
    await new Promise((r) => setTimeout(r, 50)); // poll the scrape until the series appear
    m = await scrape(broker);
  }
  for (const th of threads) {
    const s = m.get(`emqx_ts_thread_cpu_seconds{thread="${th}"}`);
    // One thread's CPU time, not the process's: never more than the time it has existed.
    assert.ok(s > 0 && s <= process.uptime() + 0.05, `${th} ${s} s (process up ${process.uptime()} s)`);
  }
});

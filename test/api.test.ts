/**
 * The REST API (/api/v5) over real HTTP against real MQTT clients: authentication, clients
 * (paging, filters, kick), subscriptions, topics, publish, stats, metrics, nodes, status.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { ConfigError } from '../src/config/load.js';
import { shardOf } from '../src/listener/client-id.js';
import {
  client,
  closed,
  Inbox,
  idOnShard,
  publish,
  startBroker,
  subscribe,
  TEST_HTTP_DEFAULTS,
  waitForMessage,
} from './helpers/broker.js';
import { api, basicAuth } from './helpers/ops.js';

const NODE = 'emqx-ts@127.0.0.1';

test('every endpoint needs the API key; none is accepted without it', async (t) => {
  const broker = await startBroker(t);
  const { key, secret } = broker.credentials;
  for (const path of [
    '/clients',
    '/clients/x',
    '/subscriptions',
    '/topics',
    '/stats',
    '/metrics',
    '/nodes',
    '/status',
  ]) {
    const none = await api(broker, 'GET', path, { auth: null });
    assert.equal(none.status, 401, `${path} without credentials`);
    assert.equal(none.json.code, 'BAD_API_KEY_OR_SECRET');
    assert.match(none.headers.get('www-authenticate') ?? '', /^Basic /);
    assert.equal(
      (await api(broker, 'GET', path, { auth: basicAuth(key, `${secret}x`) })).status,
      401,
      'wrong secret',
    );
    assert.equal(
      (await api(broker, 'GET', path, { auth: basicAuth(`${key}x`, secret) })).status,
      401,
      'wrong key',
    );
    assert.equal((await api(broker, 'GET', path, { auth: 'Bearer abc' })).status, 401, 'not basic');
  }
  assert.equal(
    (await api(broker, 'POST', '/publish', { auth: null, body: { topic: 't', payload: 'x' } })).status,
    401,
  );
  assert.equal((await api(broker, 'DELETE', '/clients/x', { auth: null })).status, 401);
  assert.equal((await api(broker, 'GET', '/stats')).status, 200, 'with the key');
  assert.equal((await api(broker, 'GET', '/nope')).status, 404);
});

test('API key: generated once into node.data_dir, reused, or configured', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-key-'));
  const first = await startBroker(t, { 'node.data_dir': dir });
  const file = join(dir, 'api_key');
  assert.equal(first.credentials.file, file);
  assert.equal(readFileSync(file, 'utf8'), `${first.credentials.key}:${first.credentials.secret}\n`);
  assert.equal(statSync(file).mode & 0o777, 0o600, 'only the owner can read it');
  assert.ok(first.credentials.secret.length >= 32);
  const second = await startBroker(t, { 'node.data_dir': dir });
  assert.deepEqual(
    [second.credentials.key, second.credentials.secret],
    [first.credentials.key, first.credentials.secret],
  );

  const configured = await startBroker(t, {
    'node.data_dir': dir,
    'api.key': 'ops',
    'api.secret': 's3cret-s3cret',
  });
  assert.equal(
    (await api(configured, 'GET', '/status', { auth: basicAuth('ops', 's3cret-s3cret') })).status,
    200,
  );
  const generated = basicAuth(first.credentials.key, first.credentials.secret);
  assert.equal((await api(configured, 'GET', '/status', { auth: generated })).status, 401);

  await assert.rejects(
    Broker.start({ config: { ...TEST_HTTP_DEFAULTS, 'listener.port': 0, 'api.key': 'only-a-key' } }),
    (err) => err instanceof ConfigError && /api\.key.*api\.secret/.test(err.message),
  );
});

test('GET /clients: paging over every shard, filters, one client, its subscriptions', async (t) => {
  const broker = await startBroker(t);
  const ids = Array.from({ length: 7 }, (_, i) => `pg-${i}`);
  const clients = [];
  for (const id of ids)
    clients.push(await client(t, broker, { clientId: id, username: id === 'pg-3' ? 'carol' : undefined }));
  const shards = new Set(ids.map((id) => shardOf(id, broker.shardCount)));
  assert.equal(shards.size, 2, 'the clients live on both shards');
  const offline = await client(t, broker, { clientId: 'pg-offline', clean: false });
  await subscribe(offline, 'off/+', 1);
  offline.end();
  await closed(offline);

  const seen: string[] = [];
  for (let page = 1; page <= 3; page++) {
    const r = await api(
      broker,
      'GET',
      `/clients?like_clientid=pg-&conn_state=connected&limit=3&page=${page}`,
    );
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.meta, { page, limit: 3, count: 7, hasnext: page < 3 });
    assert.equal(r.json.data.length, page < 3 ? 3 : 1);
    seen.push(...r.json.data.map((c: { clientid: string }) => c.clientid));
  }
  assert.deepEqual(seen, ids, 'pages partition the sorted list');
  const all = await api(broker, 'GET', '/clients');
  assert.equal(all.json.meta.count, 8);
  assert.deepEqual(all.json.meta, { page: 1, limit: 100, count: 8, hasnext: false });

  const carol = await api(broker, 'GET', '/clients?username=carol');
  assert.deepEqual(
    carol.json.data.map((c: { clientid: string }) => c.clientid),
    ['pg-3'],
  );
  const off = await api(broker, 'GET', '/clients?conn_state=disconnected');
  assert.deepEqual(
    off.json.data.map((c: { clientid: string }) => c.clientid),
    ['pg-offline'],
  );
  assert.equal((await api(broker, 'GET', '/clients?clean_start=false')).json.meta.count, 1);
  const future = new Date(Date.now() + 3_600_000).toISOString();
  assert.equal((await api(broker, 'GET', `/clients?gte_connected_at=${future}`)).json.meta.count, 0);
  assert.equal((await api(broker, 'GET', '/clients?limit=0')).status, 400);
  assert.equal((await api(broker, 'GET', '/clients?page=x')).status, 400);

  const one = await api(broker, 'GET', '/clients/pg-3');
  assert.equal(one.status, 200);
  const c = one.json;
  assert.equal(c.clientid, 'pg-3');
  assert.equal(c.username, 'carol');
  assert.equal(c.node, NODE);
  assert.equal(c.connected, true);
  assert.equal(c.ip_address, '127.0.0.1');
  assert.equal(c.port, (clients[3].stream as unknown as { localPort: number }).localPort);
  assert.equal(c.proto_ver, 4);
  assert.equal(c.clean_start, true);
  assert.ok(Math.abs(Date.parse(c.connected_at) - Date.now()) < 60_000);
  const offOne = (await api(broker, 'GET', '/clients/pg-offline')).json;
  assert.equal(offOne.connected, false);
  assert.equal(offOne.subscriptions_cnt, 1);
  assert.equal(offOne.is_persistent, true);

  const missing = await api(broker, 'GET', '/clients/nobody');
  assert.equal(missing.status, 404);
  assert.equal(missing.json.code, 'CLIENTID_NOT_FOUND');

  await subscribe(clients[1], ['a/+', 'b/#'], 1);
  const subs = await api(broker, 'GET', '/clients/pg-1/subscriptions');
  assert.deepEqual(subs.json, [
    { clientid: 'pg-1', topic: 'a/+', qos: 1, node: NODE, nl: 0, rap: 0, rh: 0 },
    { clientid: 'pg-1', topic: 'b/#', qos: 1, node: NODE, nl: 0, rap: 0, rh: 0 },
  ]);
  assert.equal((await api(broker, 'GET', '/clients/nobody/subscriptions')).status, 404);
  // An encoded slash is part of the client id, not a path separator.
  const slash = await client(t, broker, { clientId: 'pg/slash' });
  assert.equal((await api(broker, 'GET', '/clients/pg%2Fslash')).json.clientid, 'pg/slash');
  slash.end();
});

test('DELETE /clients/{id} kicks the client and discards its session', async (t) => {
  const broker = await startBroker(t);
  const id = idOnShard(broker, 1, 'kick-me');
  const c = await client(t, broker, { clientId: id, clean: false });
  await subscribe(c, 'k/1', 1);
  const r = await api(broker, 'DELETE', `/clients/${id}`);
  assert.equal(r.status, 204);
  await closed(c);
  assert.equal((await api(broker, 'GET', `/clients/${id}`)).status, 404, 'session discarded');
  assert.equal((await api(broker, 'GET', `/subscriptions?clientid=${id}`)).json.meta.count, 0);
  assert.equal((await api(broker, 'DELETE', `/clients/${id}`)).status, 404);
});

test('GET /subscriptions and /topics merge the shards', async (t) => {
  const broker = await startBroker(t);
  const a = await client(t, broker, { clientId: idOnShard(broker, 0, 'sa') });
  const b = await client(t, broker, { clientId: idOnShard(broker, 1, 'sb') });
  await subscribe(a, ['shared/t', 'x/+/y'], 1);
  await subscribe(b, ['shared/t'], 2);
  await subscribe(b, ['z/#'], 0);

  const subs = await api(broker, 'GET', '/subscriptions');
  assert.equal(subs.json.meta.count, 4);
  assert.deepEqual(
    subs.json.data.map(
      (s: { clientid: string; topic: string; qos: number }) => `${s.clientid} ${s.topic} ${s.qos}`,
    ),
    [
      `${a.options.clientId} shared/t 1`,
      `${a.options.clientId} x/+/y 1`,
      `${b.options.clientId} shared/t 2`,
      `${b.options.clientId} z/# 0`,
    ].sort(),
  );
  assert.equal((await api(broker, 'GET', '/subscriptions?topic=shared/t')).json.meta.count, 2);
  assert.equal((await api(broker, 'GET', '/subscriptions?qos=2')).json.meta.count, 1);
  assert.equal(
    (await api(broker, 'GET', `/subscriptions?clientid=${b.options.clientId}`)).json.meta.count,
    2,
  );
  assert.equal((await api(broker, 'GET', '/subscriptions?match_topic=x/%23')).json.meta.count, 1);
  const paged = await api(broker, 'GET', '/subscriptions?limit=3&page=2');
  assert.deepEqual(paged.json.meta, { page: 2, limit: 3, count: 4, hasnext: false });
  assert.equal(paged.json.data.length, 1);

  const topics = await api(broker, 'GET', '/topics');
  assert.deepEqual(topics.json, {
    data: ['shared/t', 'x/+/y', 'z/#'].map((topic) => ({ topic, node: NODE })),
    meta: { page: 1, limit: 100, count: 3, hasnext: false },
  });
  assert.equal((await api(broker, 'GET', '/topics?topic=z/%23')).json.meta.count, 1);
});

test('POST /publish delivers to MQTT subscribers on every shard', async (t) => {
  const broker = await startBroker(t);
  const s0 = await client(t, broker, { clientId: idOnShard(broker, 0, 'p0') });
  const s1 = await client(t, broker, { clientId: idOnShard(broker, 1, 'p1') });
  const in0 = new Inbox(s0);
  const in1 = new Inbox(s1);
  await subscribe(s0, 'api/+', 1);
  await subscribe(s1, 'api/#', 2);

  const r = await api(broker, 'POST', '/publish', { body: { topic: 'api/1', payload: 'hello', qos: 1 } });
  assert.equal(r.status, 200);
  assert.match(r.json.id, /^[0-9A-F]{32}$/);
  for (const inbox of [in0, in1]) {
    const m = await waitForMessage(inbox, (x) => x.topic === 'api/1');
    assert.equal(m.payload, 'hello');
    assert.equal(m.qos, 1);
  }
  const b64 = await api(broker, 'POST', '/publish', {
    body: {
      topic: 'api/2',
      payload: Buffer.from('binary\u0000ok').toString('base64'),
      payload_encoding: 'base64',
    },
  });
  assert.equal(b64.status, 200);
  assert.equal((await waitForMessage(in0, (x) => x.topic === 'api/2')).payload, 'binary\u0000ok');

  const retained = await api(broker, 'POST', '/publish', {
    body: { topic: 'kept/1', payload: 'r', retain: true },
  });
  assert.equal(retained.status, 202, 'nobody subscribes to kept/1 yet');
  assert.equal(retained.json.message, 'no_matching_subscribers');
  assert.equal(retained.json.reason_code, 16);
  const late = await client(t, broker, { clientId: 'late' });
  const lateIn = new Inbox(late);
  await subscribe(late, 'kept/#', 0);
  const kept = await waitForMessage(lateIn, (x) => x.topic === 'kept/1');
  assert.equal(kept.retain, true);

  // Not counted as a client message, but as dropped when nobody listens (not $SYS).
  const before = broker.counters.snapshot();
  assert.equal(
    (await api(broker, 'POST', '/publish', { body: { topic: 'void', payload: 'x' } })).status,
    202,
  );
  await publish(s0, 'api/sync', 'sync', { qos: 1 });
  await waitForMessage(in1, (x) => x.topic === 'api/sync');

  for (const [body, why] of [
    [{ topic: 'a/#', payload: 'x' }, 'wildcard topic'],
    [{ payload: 'x' }, 'no topic'],
    [{ topic: 'a', qos: 3 }, 'qos 3'],
    [{ topic: 'a', payload: 1 }, 'payload not a string'],
    ['{not json', 'not JSON'],
  ] as const) {
    const bad = await api(broker, 'POST', '/publish', { body });
    assert.equal(bad.status, 400, why);
    assert.equal(bad.json.code, 'BAD_REQUEST');
  }
  const after = broker.counters.snapshot();
  assert.equal(after.messagesReceived - before.messagesReceived, 1, 'only the MQTT sync message');
});

test('GET /stats, /metrics, /nodes, /status', async (t) => {
  const broker = await startBroker(t);
  const c = await client(t, broker, { clientId: 'st-1' });
  await subscribe(c, 's/1', 1);
  await publish(c, 's/1', 'x', { qos: 1 });

  const stats = await api(broker, 'GET', '/stats');
  assert.equal(stats.status, 200);
  assert.equal(stats.json.length, 1);
  assert.equal(stats.json[0].node, NODE);
  assert.equal(stats.json[0]['connections.count'], 1);
  assert.equal(stats.json[0]['live_connections.count'], 1);
  assert.equal(stats.json[0]['subscriptions.count'], 1);
  assert.equal(stats.json[0]['topics.count'], 1);
  assert.ok(stats.json[0]['connections.max'] >= 1);
  const agg = await api(broker, 'GET', '/stats?aggregate=true');
  assert.equal(agg.json['sessions.count'], 1);

  const metrics = await api(broker, 'GET', '/metrics');
  assert.equal(metrics.json[0].node, NODE);
  assert.equal(metrics.json[0]['messages.received'], 1);
  assert.equal(metrics.json[0]['messages.qos1.received'], 1);
  assert.equal(metrics.json[0]['packets.connect.received'], 1);
  assert.equal((await api(broker, 'GET', '/metrics?aggregate=true')).json['client.connected'], 1);

  const nodes = await api(broker, 'GET', '/nodes');
  assert.equal(nodes.json.length, 1);
  assert.equal(nodes.json[0].node, NODE);
  assert.equal(nodes.json[0].node_status, 'running');
  assert.equal(nodes.json[0].version, broker.version);
  assert.equal(nodes.json[0].live_connections, 1);
  assert.ok(nodes.json[0].uptime >= 0);
  assert.equal((await api(broker, 'GET', `/nodes/${encodeURIComponent(NODE)}`)).json.node, NODE);
  assert.equal((await api(broker, 'GET', '/nodes/other@host')).status, 404);

  const status = await api(broker, 'GET', '/status');
  assert.equal(status.status, 200);
  assert.equal(status.text, `Node ${NODE} is started\nemqx is running`);
  const sj = await api(broker, 'GET', '/status?format=json');
  assert.deepEqual(sj.json, {
    node_name: NODE,
    rel_vsn: broker.version,
    broker_status: 'started',
    app_status: 'running',
  });
});

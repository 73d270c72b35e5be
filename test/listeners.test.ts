/**
 * The listener list in the configuration (listeners.{tcp,ssl,ws,wss}.default): binds, which
 * listeners run, the older listener.* keys, per-listener max_connections, and no listener at all.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { loadConfig } from '../src/config/load.js';
import { enabledListeners, parseBind } from '../src/listener/listeners.js';
import {
  client,
  clientAt,
  connectFrame,
  RawClient,
  startBroker,
  TEST_HTTP_DEFAULTS,
} from './helpers/broker.js';

test('parseBind: host:port, [ipv6]:port, a bare port; anything else throws', () => {
  assert.deepEqual(parseBind('127.0.0.1:8883'), { host: '127.0.0.1', port: 8883 });
  assert.deepEqual(parseBind('[::1]:8083'), { host: '::1', port: 8083 });
  assert.deepEqual(parseBind('1883'), { host: '0.0.0.0', port: 1883 });
  for (const bad of ['host', 'a:b', '1:99999', '[::1]']) assert.throws(() => parseBind(bad), /bind/);
});

test('defaults: only tcp runs, on listener.host:listener.port; ssl/wss need certificates; env vars EMQX-style', () => {
  const d = enabledListeners(loadConfig());
  assert.deepEqual(
    d.map((l) => [l.id, l.host, l.port]),
    [['tcp:default', '0.0.0.0', 1883]],
  );
  const c = loadConfig({
    env: {
      EMQX_LISTENER__PORT: '1999',
      EMQX_LISTENERS__WS__DEFAULT__ENABLE: 'true',
      EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CERTFILE: '/x.crt',
      EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__KEYFILE: '/x.key',
    },
  });
  assert.deepEqual(
    enabledListeners(c).map((l) => [l.id, l.port]),
    [
      ['tcp:default', 1999],
      ['ssl:default', 8883],
      ['ws:default', 8083],
    ],
  );
  const bound = loadConfig({ overrides: { listeners: { tcp: { default: { bind: '127.0.0.2:2883' } } } } });
  assert.deepEqual(enabledListeners(bound)[0], {
    id: 'tcp:default',
    type: 'tcp',
    index: 0,
    host: '127.0.0.2',
    port: 2883,
  });
});

test('listeners.ws.default.max_connections: the listener refuses beyond it (CONNACK 0x03), tcp is not affected', async (t) => {
  const broker = await startBroker(t, {
    'listeners.ws.default.enable': true,
    'listeners.ws.default.bind': '127.0.0.1:0',
    'listeners.ws.default.max_connections': 1,
  });
  const url = `ws://127.0.0.1:${broker.listenerPorts['ws:default']}/mqtt`;
  await clientAt(t, url, { clientId: 'ws-1' });
  await assert.rejects(clientAt(t, url, { clientId: 'ws-2' }), /Server unavailable/);
  assert.equal(broker.counters.snapshot().listenerConnectionsRefusedMax, 1);
  await client(t, broker, { clientId: 'tcp-1' });
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame({ clientId: 'tcp-2' }));
  assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
});

test('no listener enabled: start fails with a clear error', async () => {
  await assert.rejects(
    Broker.start({
      config: { ...TEST_HTTP_DEFAULTS, 'node.shards': 1, 'listeners.tcp.default.enable': false },
    }),
    /no MQTT listener is enabled/,
  );
});

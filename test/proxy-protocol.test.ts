/**
 * PROXY protocol v1 and v2 on the tcp listener (listeners.tcp.default.proxy_protocol): raw
 * headers as HAProxy / a cloud load balancer sends them, then MQTT. The address in the header is
 * the client's in the REST API and in $SYS client events (the $SYS subscriber connects over
 * the ws listener, which takes no header); bad, missing and late headers close the connection.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import { parseProxyHeader } from '../src/listener/proxy-protocol.js';
import type { Ctx } from './helpers/base.js';
import {
  assertBrokerServes,
  connectFrame,
  Inbox,
  idOnShard,
  LineReader,
  RawClient,
  startBroker,
  TEST_HTTP_FLAGS,
  waitFor,
  waitForMessage,
  within,
} from './helpers/broker.js';
import { api } from './helpers/ops.js';

const T = 60_000;
const PROXY = {
  'listeners.tcp.default.proxy_protocol': true,
  'listeners.ws.default.enable': true,
  'listeners.ws.default.bind': '127.0.0.1:0',
};
const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function v2(cmd: number, fam: number, addrs: Buffer): Buffer {
  const head = Buffer.from([0x20 | cmd, fam, 0, 0]);
  head.writeUInt16BE(addrs.length, 2);
  return Buffer.concat([SIG, head, addrs]);
}

function v2tcp4(src: number[], sport: number): Buffer {
  const b = Buffer.alloc(12);
  Buffer.from(src).copy(b, 0);
  Buffer.from([10, 0, 0, 1]).copy(b, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(1883, 10);
  return v2(1, 0x11, b);
}

function v2tcp6(src: number[], sport: number): Buffer {
  const b = Buffer.alloc(36 + 5);
  for (let i = 0; i < 8; i++) b.writeUInt16BE(src[i], 2 * i);
  b.writeUInt16BE(1, 30); // destination ::1
  b.writeUInt16BE(sport, 32);
  b.writeUInt16BE(1883, 34);
  // A TLV after the addresses (type 0x04 NOOP, length 2): skipped.
  Buffer.from([0x04, 0, 2, 0, 0]).copy(b, 36);
  return v2(1, 0x21, b);
}

async function proxied(t: Ctx, broker: Broker, parts: Buffer[], clientId: string): Promise<RawClient> {
  const raw = await RawClient.connect(t, broker.port);
  for (const p of parts) raw.send(p);
  raw.send(connectFrame({ clientId }));
  const connack = await raw.read(4);
  assert.deepEqual([...connack], [0x20, 2, 0, 0], `CONNACK for ${clientId}`);
  return raw;
}

async function clientAddress(broker: Broker, id: string): Promise<[string, number]> {
  const res = await api(broker, 'GET', `/clients/${id}`);
  assert.equal(res.status, 200, res.text);
  return [res.json.ip_address, res.json.port];
}

test('PROXY v1 TCP4: the header address is the client address in the REST API and $SYS connected events (both shards)', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, PROXY);
  const sys = await mqtt.connectAsync(`ws://127.0.0.1:${broker.listenerPorts['ws:default']}/mqtt`, {
    clientId: 'sys-watch',
    reconnectPeriod: 0,
  });
  t.after(() => sys.end(true));
  const inbox = new Inbox(sys);
  await sys.subscribeAsync('$SYS/brokers/+/clients/+/connected');
  for (const shard of [0, 1]) {
    const id = idOnShard(broker, shard, 'pv1');
    // Header, then CONNECT in the same segment (a proxy forwards what the client sent at once).
    const raw = await RawClient.connect(t, broker.port);
    raw.send(
      Buffer.concat([
        Buffer.from(`PROXY TCP4 203.0.113.${7 + shard} 10.0.0.1 5123${shard} 1883\r\n`),
        connectFrame({ clientId: id }),
      ]),
    );
    assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
    assert.deepEqual(await clientAddress(broker, id), [`203.0.113.${7 + shard}`, 51230 + shard]);
    const ev = await waitForMessage(inbox, (m) => m.topic.includes(`/clients/${id}/connected`));
    assert.equal(JSON.parse(ev.payload).ipaddress, `203.0.113.${7 + shard}`);
  }
});

test('PROXY v2 TCP4 and TCP6 (split over writes, with a TLV); LOCAL and v1 UNKNOWN keep the socket address', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, PROXY);
  await proxied(t, broker, [v2tcp4([198, 51, 100, 9], 40001)], 'pv2-4');
  assert.deepEqual(await clientAddress(broker, 'pv2-4'), ['198.51.100.9', 40001]);
  const h6 = v2tcp6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 40002);
  await proxied(t, broker, [h6.subarray(0, 7), h6.subarray(7, 20), h6.subarray(20)], 'pv2-6');
  assert.deepEqual(await clientAddress(broker, 'pv2-6'), ['2001:db8::1', 40002]);
  await proxied(t, broker, [v2(0, 0x00, Buffer.alloc(0))], 'pv2-local');
  assert.equal((await clientAddress(broker, 'pv2-local'))[0], '127.0.0.1');
  await proxied(t, broker, [Buffer.from('PROXY UNKNOWN\r\n')], 'pv1-unknown');
  assert.equal((await clientAddress(broker, 'pv1-unknown'))[0], '127.0.0.1');
});

test('no PROXY header, a malformed one or none in time: closed and counted; the broker serves on', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { ...PROXY, 'listeners.tcp.default.proxy_protocol_timeout': 0.3 });
  const bad = [
    connectFrame({ clientId: 'no-header' }),
    Buffer.from('PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n'),
    Buffer.concat([SIG, Buffer.from([0x31, 0x11, 0, 0])]), // version 3
    Buffer.from(`PROXY TCP4 ${'1'.repeat(120)}`), // longer than a v1 line can be
  ];
  for (const bytes of bad) {
    const before = broker.counters.snapshot().proxyProtocolErrors;
    const raw = await RawClient.connect(t, broker.port);
    raw.send(bytes);
    await raw.waitClosed();
    await waitFor(() => broker.counters.snapshot().proxyProtocolErrors === before + 1, 'counted');
  }
  const before = broker.counters.snapshot().proxyProtocolErrors;
  const silent = await RawClient.connect(t, broker.port);
  await within(silent.waitClosed(), 'closed after proxy_protocol_timeout');
  assert.equal(broker.counters.snapshot().proxyProtocolErrors, before + 1);
  assert.equal(broker.counters.snapshot().connections, 0);
  // The broker still serves proxied clients.
  await proxied(t, broker, [Buffer.from('PROXY TCP4 192.0.2.1 10.0.0.1 1000 1883\r\n')], 'after-bad');
});

test('parseProxyHeader waits for more bytes and refuses what is not a header', () => {
  assert.equal(parseProxyHeader(Buffer.from('PROX')), undefined);
  assert.equal(parseProxyHeader(SIG.subarray(0, 5)), undefined);
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP6 ::1 ::2 1 2\r\nrest')), {
    addr: { address: '::1', port: 1 },
    length: 24,
  });
  assert.throws(() => parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n')), /no PROXY header/);
  assert.throws(() => parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n')), /malformed/);
});

test('without proxy_protocol a PROXY line is not a CONNECT: refused', { timeout: T }, async (t) => {
  const broker = await startBroker(t);
  const raw = await RawClient.connect(t, broker.port);
  raw.send(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'));
  await raw.waitClosed();
  await assertBrokerServes(t, broker);
});

test('the PROXY header address is the one in the broker log lines (client connected / disconnected)', {
  timeout: T,
}, async (t) => {
  const main = fileURLToPath(new URL('../dist/src/main.js', import.meta.url));
  const args = ['--port', '0', '--host', '127.0.0.1', '--shards', '2', '--log-level', 'info'];
  const child = spawn(
    process.execPath,
    [main, ...args, '--listeners.tcp.default.proxy_protocol=true', ...TEST_HTTP_FLAGS],
    {
      env: { PATH: process.env.PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  t.after(() => {
    child.kill('SIGKILL');
  });
  const out = new LineReader(child.stdout!);
  const listening = JSON.parse(await out.waitFor((l) => l.includes('"msg":"listening"'), 'listening'));
  const raw = await RawClient.connect(t, listening.port);
  raw.send(
    Buffer.concat([
      Buffer.from('PROXY TCP4 203.0.113.50 10.0.0.1 44444 1883\r\n'),
      connectFrame({ clientId: 'logged' }),
    ]),
  );
  assert.deepEqual([...(await raw.read(4))], [0x20, 2, 0, 0]);
  const connected = JSON.parse(
    await out.waitFor((l) => l.includes('"msg":"client connected"'), 'client connected'),
  );
  assert.equal(connected.remote, '203.0.113.50:44444');
  raw.socket.destroy();
  const gone = JSON.parse(
    await out.waitFor((l) => l.includes('"msg":"client disconnected"'), 'client disconnected'),
  );
  assert.equal(gone.remote, '203.0.113.50:44444');
});

/**
 * The ws and wss listeners with real clients: mqtt.js over ws:// and wss://, a raw `ws` client
 * for subprotocols, MQTT packets split across and packed within WebSocket frames, text frames,
 * oversized messages, ping/pong and the path; a hand-written malformed frame on a raw socket.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect as netConnect } from 'node:net';
import { test } from 'node:test';
import mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';
import type { Broker } from '../src/broker/broker.js';
import type { Ctx } from './helpers/base.js';
import {
  assertBrokerServes,
  clientAt,
  connectFrame,
  idOnShard,
  startBroker,
  waitFor,
  within,
} from './helpers/broker.js';
import { api } from './helpers/ops.js';
import { makePki, tlsListeners } from './helpers/tls.js';

const T = 60_000;
const WS = { 'listeners.ws.default.enable': true, 'listeners.ws.default.bind': '127.0.0.1:0' };

function wsUrl(b: Broker, path = '/mqtt'): string {
  return `ws://127.0.0.1:${b.listenerPorts['ws:default']}${path}`;
}

/** A raw WebSocket client that collects the broker's binary messages as one byte stream. */
async function rawWs(
  t: Ctx,
  url: string,
  protocols: string[] = ['mqtt'],
): Promise<{ ws: WebSocket; bytes: () => Buffer; closed: Promise<number> }> {
  const ws = new WebSocket(url, protocols);
  t.after(() => ws.terminate());
  let buf = Buffer.alloc(0);
  ws.on('message', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
  });
  ws.on('error', () => {});
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  await within(once(ws, 'open'), 'WebSocket open');
  return { ws, bytes: () => buf, closed };
}

function frame(p: Parameters<typeof mqttPacket.generate>[0]): Buffer {
  return mqttPacket.generate(p);
}

test('mqtt.js over ws:// delivers across shards (tunnelled connections), the REST API shows listener ws:default', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, WS);
  const ids = [0, 1, 2, 3, 4, 5].flatMap((n) => [
    idOnShard(broker, 0, `w0-${n}`),
    idOnShard(broker, 1, `w1-${n}`),
  ]);
  const clients = await Promise.all(ids.map((clientId) => clientAt(t, wsUrl(broker), { clientId })));
  assert.ok(broker.counters.snapshot().tunnelsOpened > 0, 'some ws connections were tunnelled');
  await Promise.all(clients.map((c, i) => c.subscribeAsync(`ws/${i}`, { qos: 1 })));
  const got = clients.map(
    (c, i) =>
      new Promise<string>((resolve) => c.on('message', (tp, p) => tp === `ws/${i}` && resolve(p.toString()))),
  );
  await Promise.all(
    clients.map((c, i) => c.publishAsync(`ws/${(i + 1) % clients.length}`, `m${i}`, { qos: 1 })),
  );
  const payloads = await within(Promise.all(got), 'every ws client got its message');
  for (const [i, p] of payloads.entries()) assert.equal(p, `m${(i + clients.length - 1) % clients.length}`);
  const res = await api(broker, 'GET', `/clients/${ids[0]}`);
  assert.equal(res.json.listener, 'ws:default');
  await Promise.all(clients.map((c) => c.endAsync()));
  await waitFor(() => broker.counters.snapshot().connections === 0, 'all closed');
});

test('mqtt.js over wss:// (MQTT 5) round trip', { timeout: T }, async (t) => {
  const pki = makePki(t);
  const broker = await startBroker(t, tlsListeners(pki));
  const url = `wss://localhost:${broker.listenerPorts['wss:default']}/mqtt`;
  const ca = pki.read(pki.caCert);
  const sub = await clientAt(t, url, { clientId: idOnShard(broker, 0, 'wss-sub'), ca, protocolVersion: 5 });
  const pub = await clientAt(t, url, { clientId: idOnShard(broker, 1, 'wss-pub'), ca, protocolVersion: 5 });
  await sub.subscribeAsync('wss/t', { qos: 2 });
  const got = new Promise<string>((resolve) => sub.on('message', (_tp, p) => resolve(p.toString())));
  await pub.publishAsync('wss/t', 'secure ws', { qos: 2 });
  assert.equal(await within(got, 'message over wss'), 'secure ws');
});

test('subprotocols: mqtt is chosen when offered [MQTT-6.0.0-4], mqttv3.1 for a 3.1 client', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, WS);
  const a = await rawWs(t, wsUrl(broker), ['mqttv3.1', 'mqtt']);
  assert.equal(a.ws.protocol, 'mqtt');
  const b = await rawWs(t, wsUrl(broker), ['mqttv3.1']);
  assert.equal(b.ws.protocol, 'mqttv3.1');
});

test('MQTT packets split across WebSocket frames and packed within one frame are read [MQTT-6.0.0-2]', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, WS);
  const { ws, bytes } = await rawWs(t, wsUrl(broker));
  // CONNECT one byte per WebSocket message.
  const connect = connectFrame({ clientId: 'split-packed' });
  for (const byte of connect) ws.send(Buffer.from([byte]));
  await waitFor(() => bytes().length >= 4, 'CONNACK');
  assert.deepEqual([...bytes().subarray(0, 4)], [0x20, 2, 0, 0]);
  // SUBSCRIBE, PUBLISH to it and PINGREQ in one message; then a PUBLISH split over two messages.
  const sub = frame({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'sp/t', qos: 0 }] });
  const pub = frame({
    cmd: 'publish',
    topic: 'sp/t',
    payload: Buffer.from('packed'),
    qos: 0,
    dup: false,
    retain: false,
  });
  const ping = frame({ cmd: 'pingreq' });
  ws.send(Buffer.concat([sub, pub, ping]));
  const pub2 = frame({
    cmd: 'publish',
    topic: 'sp/t',
    payload: Buffer.from('split'),
    qos: 0,
    dup: false,
    retain: false,
  });
  ws.send(pub2.subarray(0, 5));
  ws.send(pub2.subarray(5));
  const packets: mqttPacket.Packet[] = [];
  await waitFor(() => {
    packets.length = 0;
    const p = mqttPacket.parser();
    p.on('packet', (x) => packets.push(x));
    p.parse(bytes());
    // The SUBACK may come after the PUBLISHes: it waits for the retained-message lookup (the
    // Server MAY send matching PUBLISH packets before the SUBACK, MQTT 3.1.1 §3.8.4).
    return (
      packets.filter((x) => x.cmd === 'publish').length === 2 &&
      packets.some((x) => x.cmd === 'pingresp') &&
      packets.some((x) => x.cmd === 'suback')
    );
  }, 'SUBACK, two PUBLISH and PINGRESP');
  const cmds = packets.map((p) => p.cmd).sort();
  assert.deepEqual(cmds, ['connack', 'pingresp', 'publish', 'publish', 'suback']);
  const payloads = packets
    .filter((p) => p.cmd === 'publish')
    .map((p) => (p as mqttPacket.IPublishPacket).payload.toString());
  assert.deepEqual(payloads, ['packed', 'split']);
});

test('a text frame closes the connection [MQTT-6.0.0-1], counted', { timeout: T }, async (t) => {
  const broker = await startBroker(t, WS);
  const before = broker.counters.snapshot().wsProtocolErrors;
  const { ws, closed } = await rawWs(t, wsUrl(broker));
  ws.send(connectFrame({ clientId: 'texty' }).toString('latin1'));
  assert.equal(await within(closed, 'closed'), 1003);
  await waitFor(() => broker.counters.snapshot().wsProtocolErrors === before + 1, 'counted');
});

test('a message over websocket.max_frame_size is closed with 1009, counted; ping gets pong', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { ...WS, 'listeners.ws.default.websocket.max_frame_size': 1024 });
  const { ws, bytes, closed } = await rawWs(t, wsUrl(broker));
  ws.send(connectFrame({ clientId: 'big' }));
  await waitFor(() => bytes().length >= 4, 'CONNACK');
  const pong = once(ws, 'pong');
  ws.ping(Buffer.from('hi'));
  assert.equal(String((await within(pong, 'pong'))[0]), 'hi');
  const before = broker.counters.snapshot().wsProtocolErrors;
  const big = frame({
    cmd: 'publish',
    topic: 'b',
    payload: Buffer.alloc(2000),
    qos: 0,
    dup: false,
    retain: false,
  });
  ws.send(big);
  assert.equal(await within(closed, 'closed'), 1009);
  await waitFor(() => broker.counters.snapshot().wsProtocolErrors === before + 1, 'counted');
});

test('another path gets 404, a plain HTTP request 426; counted', { timeout: T }, async (t) => {
  const broker = await startBroker(t, WS);
  const before = broker.counters.snapshot().wsUpgradeRefused;
  const ws = new WebSocket(wsUrl(broker, '/other'), ['mqtt']);
  ws.on('error', () => {});
  const [, res] = await within(once(ws, 'unexpected-response'), 'refused upgrade');
  assert.equal((res as { statusCode: number }).statusCode, 404);
  ws.terminate();
  const plain = await fetch(`http://127.0.0.1:${broker.listenerPorts['ws:default']}/mqtt`);
  assert.equal(plain.status, 426);
  await waitFor(() => broker.counters.snapshot().wsUpgradeRefused === before + 1, 'counted');
});

test('a malformed WebSocket frame (reserved opcode, unmasked) closes the connection with 1002, counted; the broker serves on', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, WS);
  for (const bad of [
    Buffer.from([0x83, 0x80, 1, 2, 3, 4]), // FIN + reserved opcode 3, masked, empty
    Buffer.from([0x82, 0x02, 0x10, 0x00]), // binary but unmasked: clients must mask
  ]) {
    const before = broker.counters.snapshot().wsProtocolErrors;
    const s = netConnect({ host: '127.0.0.1', port: broker.listenerPorts['ws:default'] });
    t.after(() => s.destroy());
    s.on('error', () => {});
    await once(s, 'connect');
    s.write(
      'GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n',
    );
    let got = Buffer.alloc(0);
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
    });
    await waitFor(() => got.includes('\r\n\r\n'), '101 response');
    assert.match(got.toString('latin1'), /^HTTP\/1.1 101/);
    const headerEnd = got.indexOf('\r\n\r\n') + 4;
    s.write(bad);
    await within(once(s, 'close'), 'closed');
    const rest = got.subarray(headerEnd);
    // A close frame (opcode 8) with status 1002 (protocol error).
    assert.equal(rest[0], 0x88);
    assert.equal(rest.readUInt16BE(2), 1002);
    await waitFor(() => broker.counters.snapshot().wsProtocolErrors === before + 1, 'counted');
  }
  await assertBrokerServes(t, broker);
});

test('a connection that never sends its upgrade request is closed after listener.connect_timeout', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { ...WS, 'listener.connect_timeout': 1 });
  const s = netConnect({ host: '127.0.0.1', port: broker.listenerPorts['ws:default'] });
  t.after(() => s.destroy());
  s.on('error', () => {});
  await once(s, 'connect');
  s.write('GET /mqtt HTTP/1.1\r\nHost: x\r\n'); // and never the rest
  await within(once(s, 'close'), 'closed by the broker');
  await assertBrokerServes(t, broker);
});

/**
 * The ssl listener (listeners.ssl.default) with real clients: mosquitto_pub/sub with --cafile,
 * mutual TLS with client certificates, peer_cert_as_username, TLS versions, a non-TLS client,
 * certificate reload on SIGHUP, and connections carried to their owner shard through a tunnel.
 * Certificates are made by openssl at test time (test/helpers/tls.ts); none is committed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync } from 'node:fs';
import { test } from 'node:test';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import mqtt, { type MqttClient } from 'mqtt';
import type { Broker } from '../src/broker/broker.js';
import type { Ctx } from './helpers/base.js';
import {
  assertBrokerServes,
  clientAt,
  connectFrame,
  exited,
  idOnShard,
  RawClient,
  startBroker,
  waitFor,
  within,
} from './helpers/broker.js';
import { api } from './helpers/ops.js';
import { run } from './helpers/paho.js';
import { makePki, type TestPki, tlsListeners } from './helpers/tls.js';

const T = 60_000;

function requireMosquitto(): void {
  for (const cmd of ['mosquitto_pub', 'mosquitto_sub']) {
    const r = spawnSync(cmd, ['--help'], { encoding: 'utf8' });
    assert.ok(!r.error, `${cmd} is not installed: apt-get install mosquitto-clients`);
  }
}

function sslPort(b: Broker): number {
  return b.listenerPorts['ssl:default'];
}

/** An mqtt.js client over TLS; resolves on CONNACK, rejects on a refused handshake. */
function mqtts(t: Ctx, port: number, pki: TestPki, opts: mqtt.IClientOptions = {}): Promise<MqttClient> {
  return clientAt(t, `mqtts://127.0.0.1:${port}`, {
    ca: pki.read(pki.caCert),
    servername: 'localhost',
    ...opts,
  });
}

/** A raw TLS handshake: resolves with the socket once secure, rejects on an alert or close. */
async function handshake(port: number, opts: ConnectionOptions): Promise<TLSSocket> {
  const s = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ...opts });
  s.on('error', () => {});
  await within(
    Promise.race([
      once(s, 'secureConnect'),
      once(s, 'close').then(() => Promise.reject(new Error('closed during handshake'))),
    ]),
    'TLS handshake',
  );
  return s;
}

test('mosquitto_sub --cafile gets what mosquitto_pub --cafile publishes over TLS (QoS 1)', {
  timeout: T,
}, async (t) => {
  requireMosquitto();
  const pki = makePki(t);
  const broker = await startBroker(t, tlsListeners(pki));
  const args = ['-h', 'localhost', '-p', String(sslPort(broker)), '--cafile', pki.caCert, '-V', 'mqttv311'];
  const sub = run(t, 'mosquitto_sub', [...args, '-i', 'tls-sub', '-t', 'tls/#', '-v', '-q', '1', '-C', '1']);
  await waitFor(() => broker.counters.snapshot().subscriptions === 1, 'mosquitto_sub subscribed');
  const pub = run(t, 'mosquitto_pub', [...args, '-i', 'tls-pub', '-t', 'tls/a', '-m', 'over tls', '-q', '1']);
  assert.equal((await exited(pub.child)).code, 0, pub.err.text);
  assert.equal((await exited(sub.child)).code, 0, sub.err.text);
  assert.equal(sub.out.lines[0], 'tls/a over tls');
});

test('TLS connections whose owner is another shard are tunnelled there and deliver both ways', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  const broker = await startBroker(t, tlsListeners(pki));
  const port = sslPort(broker);
  // Client ids owned by both shards: whichever shard accepts, some connections belong to the
  // other one and must go through the tunnel.
  const ids = [0, 1, 2, 3, 4, 5, 6, 7].flatMap((n) => [
    idOnShard(broker, 0, `s0-${n}`),
    idOnShard(broker, 1, `s1-${n}`),
  ]);
  const clients = await Promise.all(ids.map((clientId) => mqtts(t, port, pki, { clientId })));
  assert.ok(broker.counters.snapshot().tunnelsOpened > 0, 'some connections were tunnelled');
  await Promise.all(clients.map((c, i) => c.subscribeAsync(`tun/${i}`, { qos: 1 })));
  const got = clients.map(
    (c, i) =>
      new Promise<string>((resolve) =>
        c.on('message', (topic, payload) => {
          if (topic === `tun/${i}`) resolve(payload.toString());
        }),
      ),
  );
  // Each client publishes to the next one's topic: every pair of shards, both directions.
  await Promise.all(
    clients.map((c, i) => c.publishAsync(`tun/${(i + 1) % clients.length}`, `from ${i}`, { qos: 1 })),
  );
  const payloads = await within(Promise.all(got), 'every client got its message');
  for (const [i, p] of payloads.entries())
    assert.equal(p, `from ${(i + clients.length - 1) % clients.length}`);
  const res = await api(broker, 'GET', `/clients/${ids[1]}`);
  assert.equal(res.json.listener, 'ssl:default');
  assert.equal(res.json.ip_address, '127.0.0.1');
  // Closing at the owner closes the client's TLS socket at the terminating shard.
  await Promise.all(clients.map((c) => c.endAsync()));
  await waitFor(() => broker.counters.snapshot().connections === 0, 'all connections closed');
});

test('mutual TLS: verify_peer + fail_if_no_peer_cert accepts the CA-signed client certificate, refuses none and a rogue one', {
  timeout: T,
}, async (t) => {
  requireMosquitto();
  const pki = makePki(t);
  const broker = await startBroker(
    t,
    tlsListeners(pki, {
      'listeners.ssl.default.ssl_options.verify': 'verify_peer',
      'listeners.ssl.default.ssl_options.fail_if_no_peer_cert': true,
    }),
  );
  const base = [
    '-h',
    'localhost',
    '-p',
    String(sslPort(broker)),
    '--cafile',
    pki.caCert,
    '-t',
    'm/a',
    '-m',
    'x',
    '-q',
    '1',
  ];
  const ok = run(t, 'mosquitto_pub', [
    ...base,
    '-i',
    'mtls-ok',
    '--cert',
    pki.clientCert,
    '--key',
    pki.clientKey,
  ]);
  assert.equal((await exited(ok.child)).code, 0, `with a client certificate: ${ok.err.text}`);

  const before = broker.counters.snapshot().tlsHandshakeErrors;
  const none = run(t, 'mosquitto_pub', [...base, '-i', 'mtls-none']);
  assert.notEqual((await exited(none.child)).code, 0, 'without a client certificate it must fail');
  const rogue = run(t, 'mosquitto_pub', [
    ...base,
    '-i',
    'mtls-rogue',
    '--cert',
    pki.rogueCert,
    '--key',
    pki.rogueKey,
  ]);
  assert.notEqual((await exited(rogue.child)).code, 0, 'a certificate of another CA must fail');
  await waitFor(
    () => broker.counters.snapshot().tlsHandshakeErrors >= before + 2,
    'both handshakes counted as failed',
  );
  await assertBrokerServes(t, broker);
});

test('verify_peer without fail_if_no_peer_cert: no certificate is fine, a bad one is refused after the handshake', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  const broker = await startBroker(
    t,
    tlsListeners(pki, { 'listeners.ssl.default.ssl_options.verify': 'verify_peer' }),
  );
  const port = sslPort(broker);
  const c = await mqtts(t, port, pki, { clientId: 'no-cert' });
  await c.endAsync();

  const before = broker.counters.snapshot();
  const bad = mqtt.connect({
    host: '127.0.0.1',
    port,
    protocol: 'mqtts',
    ca: pki.read(pki.caCert),
    servername: 'localhost',
    cert: pki.read(pki.rogueCert),
    key: pki.read(pki.rogueKey),
    clientId: 'rogue',
    reconnectPeriod: 0,
  });
  bad.on('error', () => {});
  t.after(() => {
    bad.end(true);
  });
  let connected = false;
  bad.on('connect', () => {
    connected = true;
  });
  await within(new Promise<void>((resolve) => bad.once('close', () => resolve())), 'rogue client closed');
  assert.equal(connected, false, 'the rogue client never got CONNACK');
  await waitFor(
    () => broker.counters.snapshot().tlsPeerCertRefused === before.tlsPeerCertRefused + 1,
    'the refused certificate is counted',
  );
});

test('peer_cert_as_username cn and dn: the certificate subject is the username (REST API)', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  for (const mode of ['cn', 'dn'] as const) {
    const broker = await startBroker(
      t,
      tlsListeners(pki, {
        'listeners.ssl.default.ssl_options.verify': 'verify_peer',
        'mqtt.peer_cert_as_username': mode,
      }),
    );
    const c = await mqtts(t, sslPort(broker), pki, {
      clientId: `pc-${mode}`,
      username: 'claimed',
      cert: pki.read(pki.clientCert),
      key: pki.read(pki.clientKey),
    });
    const res = await api(broker, 'GET', `/clients/pc-${mode}`);
    assert.equal(res.json.username, mode === 'cn' ? 'client-1' : 'O=emqx-ts test,CN=client-1');
    await c.endAsync();
    await broker.stop();
  }
});

test('versions = tlsv1.3 refuses a TLS 1.2 client; the default takes both', { timeout: T }, async (t) => {
  const pki = makePki(t);
  const strict = await startBroker(
    t,
    tlsListeners(pki, { 'listeners.ssl.default.ssl_options.versions': 'tlsv1.3' }),
  );
  const ca = pki.read(pki.caCert);
  await assert.rejects(handshake(sslPort(strict), { ca, maxVersion: 'TLSv1.2' }));
  const s13 = await handshake(sslPort(strict), { ca });
  assert.equal(s13.getProtocol(), 'TLSv1.3');
  s13.destroy();
  const lax = await startBroker(t, tlsListeners(pki));
  const s12 = await handshake(sslPort(lax), { ca, maxVersion: 'TLSv1.2' });
  assert.equal(s12.getProtocol(), 'TLSv1.2');
  s12.destroy();
});

test('a plain MQTT client on the TLS port is closed cleanly and counted; the broker serves on', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  const broker = await startBroker(t, tlsListeners(pki));
  const before = broker.counters.snapshot().tlsHandshakeErrors;
  const raw = await RawClient.connect(t, sslPort(broker));
  raw.send(connectFrame({ clientId: 'plain-on-tls' }));
  await raw.waitClosed();
  await waitFor(
    () => broker.counters.snapshot().tlsHandshakeErrors === before + 1,
    'handshake error counted',
  );
  assert.equal(broker.counters.snapshot().connections, 0);
  await assertBrokerServes(t, broker);
});

test('SIGHUP (reload) re-reads the certificate files: new handshakes get the renewed certificate', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  const live = `${pki.dir}/live.crt`;
  const liveKey = `${pki.dir}/live.key`;
  copyFileSync(pki.serverCert, live);
  copyFileSync(pki.serverKey, liveKey);
  const broker = await startBroker(
    t,
    tlsListeners(pki, {
      'listeners.ssl.default.ssl_options.certfile': live,
      'listeners.ssl.default.ssl_options.keyfile': liveKey,
    }),
  );
  const ca = pki.read(pki.caCert);
  const first = await handshake(sslPort(broker), { ca });
  const serialBefore = first.getPeerX509Certificate()!.serialNumber;
  // A connection made before the reload keeps working.
  const c = await mqtts(t, sslPort(broker), pki, { clientId: 'before-reload' });
  // Renew in place: another server certificate (of a second test CA) over the same files.
  const renewed = makePki(t);
  copyFileSync(renewed.serverCert, live);
  copyFileSync(renewed.serverKey, liveKey);
  await broker.reload();
  await waitFor(() => broker.counters.snapshot().tlsCertReloads >= 2, 'both shards reloaded');
  const second = await handshake(sslPort(broker), { ca: renewed.read(renewed.caCert) });
  assert.notEqual(
    second.getPeerX509Certificate()!.serialNumber,
    serialBefore,
    'a renewed certificate is served',
  );
  first.destroy();
  second.destroy();
  await c.publishAsync('still/here', 'x', { qos: 1 });
  await c.endAsync();
});

test('a shard that dies takes its tunnels with it: the other end closes each one (counted), and TLS is served again after the restart', {
  timeout: T,
}, async (t) => {
  const pki = makePki(t);
  const broker = await startBroker(t, { ...tlsListeners(pki), 'log.level': 'silent' });
  const port = sslPort(broker);
  const ids = [0, 1, 2, 3, 4, 5, 6, 7].flatMap((n) => [
    idOnShard(broker, 0, `d0-${n}`),
    idOnShard(broker, 1, `d1-${n}`),
  ]);
  const clients = await Promise.all(ids.map((clientId) => mqtts(t, port, pki, { clientId })));
  const opened = broker.counters.snapshot().tunnelsOpened;
  assert.ok(opened > 0, 'some connections were tunnelled');
  // Every tunnel runs between shard 0 and shard 1, so shard 0's death ends all of them; the
  // survivor closes its end of each (the client socket it terminates, or the session it owns).
  const generation = broker.supervisor.shards[0].generation;
  broker.supervisor.post(0, { t: 'crash' });
  await waitFor(() => broker.counters.snapshot().tunnelsLost === opened, `tunnelsLost = ${opened}`);
  // Clients owned by shard 0 and clients tunnelled through it are all closed.
  await waitFor(
    () => ids.every((_, i) => i % 2 === 1 || !clients[i].connected),
    "shard 0's own clients closed",
  );
  await waitFor(
    () => broker.supervisor.shards[0].generation === generation + 1 && broker.supervisor.accepting,
    'shard 0 restarted',
  );
  const again = await mqtts(t, port, pki, { clientId: idOnShard(broker, 0, 'after-crash') });
  await again.publishAsync('after/crash', 'x', { qos: 1 });
});

/**
 * Authentication (src/auth, issue #12) over real sockets with real clients: the built-in users
 * file (pbkdf2/bcrypt/sha256, JSON and CSV), JWT (HMAC and public key, exp), the HTTP callout
 * (allow/deny/ignore, no answer = deny), the chain order, auth.allow_anonymous, async hooks with
 * auth.timeout, and clientid_must_match_username against a session takeover.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import { runPasswd } from '../src/auth/passwd.js';
import { loadConfig } from '../src/config/load.js';
import { Counter } from '../src/metrics/counters.js';
import { authTempDir, connectCode, eventually, hookFixture, usersFile } from './helpers/auth.js';
import {
  client,
  client5,
  connectFrame,
  exited,
  LineReader,
  mqttString,
  RawClient,
  rawFrame,
  readFrame,
  startBroker,
  untilPast,
  waitFor,
} from './helpers/broker.js';
import { api, scrape } from './helpers/ops.js';

const T = 60_000;
const dir = authTempDir('emqx-ts-auth-');

test('built-in users (JSON, pbkdf2): right password in, wrong password CONNACK 4 / 0x86 and no session [MQTT-3.2.2-6]', {
  timeout: T,
}, async (t) => {
  const file = usersFile(dir, 'users.json', [['alice', 'secret']]);
  const broker = await startBroker(t, { 'auth.users_file': file, 'auth.allow_anonymous': false });
  assert.equal(await connectCode(broker, { clientId: 'a1', username: 'alice', password: 'secret' }), 0);
  const sessionsBefore = broker.counters.total(Counter.sessionCreated);
  assert.equal(await connectCode(broker, { clientId: 'a2', username: 'alice', password: 'wrong' }), 4);
  assert.equal(
    await connectCode(broker, { clientId: 'a3', username: 'alice', password: 'wrong', protocolVersion: 5 }),
    0x86,
  );
  // Unknown user (every provider ignored it) with allow_anonymous false: bad credentials; no credentials: not authorised.
  assert.equal(await connectCode(broker, { clientId: 'a4', username: 'mallory', password: 'x' }), 4);
  assert.equal(await connectCode(broker, { clientId: 'a5' }), 5);
  assert.equal(await connectCode(broker, { clientId: 'a6', protocolVersion: 5 }), 0x87);
  // A refused CONNECT creates no session [MQTT-3.2.2-6].
  assert.equal(broker.counters.total(Counter.sessionCreated), sessionsBefore);
  assert.equal(broker.counters.total(Counter.authnFailure), 5);
  const s = await scrape(broker);
  assert.equal(s.get('emqx_authentication_failure'), 5);
  assert.equal(s.get('emqx_authentication_success'), 1);
  assert.equal(s.get('emqx_packets_connack_auth_error'), 5);
});

test('built-in users (CSV, bcrypt and sha256) with mosquitto_pub -u/-P; the passwd CLI writes a file the broker reads', {
  timeout: T,
}, async (t) => {
  const r = spawnSync('mosquitto_pub', ['--help']);
  assert.ok(!r.error, 'mosquitto_pub is not installed: apt-get install mosquitto-clients');
  const file = usersFile(dir, 'users.csv', [
    ['bob', 'bcrypt-pw', 'bcrypt'],
    ['carol', 'sha-pw', 'sha256'],
  ]);
  assert.equal(await runPasswd(['-a', 'pbkdf2', file, 'dave', 'cli-pw']), 0);
  const broker = await startBroker(t, { 'auth.users_file': file, 'auth.allow_anonymous': false });
  const pub = async (user: string, pw: string): Promise<{ code: number | null; text: string }> => {
    const child = spawn('mosquitto_pub', [
      ...['-h', '127.0.0.1', '-p', String(broker.port), '-V', 'mqttv311'],
      ...['-u', user, '-P', pw, '-t', 'x/y', '-m', 'hi', '-q', '1'],
    ]);
    const err = new LineReader(child.stderr);
    const out = new LineReader(child.stdout);
    const { code } = await exited(child, 20_000);
    return { code, text: err.text + out.text };
  };
  assert.equal((await pub('bob', 'bcrypt-pw')).code, 0);
  assert.equal((await pub('carol', 'sha-pw')).code, 0);
  assert.equal((await pub('dave', 'cli-pw')).code, 0);
  const bad = await pub('carol', 'bcrypt-pw');
  assert.notEqual(bad.code, 0);
  assert.match(bad.text, /bad user name or password/i);
});

test('auth.allow_anonymous true (default): no credentials is let in and counted as anonymous', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t);
  await client(t, broker, { clientId: 'anon-1' });
  const s = await scrape(broker);
  assert.equal(s.get('emqx_authentication_success_anonymous'), 1);
  assert.equal(s.get('emqx_client_auth_anonymous'), 1);
});

test('JWT (HMAC): valid token in, expired or badly signed token 0x86; JWT (public key file) verifies RS256', {
  timeout: T,
}, async (t) => {
  const secret = new TextEncoder().encode('jwt-test-secret');
  const broker = await startBroker(t, {
    'auth.jwt.secret': 'jwt-test-secret',
    'auth.allow_anonymous': false,
  });
  const now = Math.floor(Date.now() / 1000);
  const good = await new SignJWT({ sub: 'u' })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(now + 60)
    .sign(secret);
  const expired = await new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(now - 60)
    .sign(secret);
  const forged = await new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode('other'));
  assert.equal(
    await connectCode(broker, { clientId: 'j1', username: 'u', password: good, protocolVersion: 5 }),
    0,
  );
  assert.equal(
    await connectCode(broker, { clientId: 'j2', username: 'u', password: expired, protocolVersion: 5 }),
    0x86,
  );
  assert.equal(await connectCode(broker, { clientId: 'j3', username: 'u', password: forged }), 4);

  const { publicKey, privateKey } = await generateKeyPair('RS256');
  const pem = join(dir, 'jwt-pub.pem');
  writeFileSync(pem, await exportSPKI(publicKey));
  const b2 = await startBroker(t, { 'auth.jwt.public_key_file': pem, 'auth.allow_anonymous': false });
  const rs = await new SignJWT({})
    .setProtectedHeader({ alg: 'RS256' })
    .setExpirationTime(now + 60)
    .sign(privateKey);
  assert.equal(await connectCode(b2, { clientId: 'j4', username: 'u', password: rs }), 0);
  assert.equal(await connectCode(b2, { clientId: 'j5', username: 'u', password: good }), 4);
});

/** An HTTP auth server: answers per username. */
async function authServer(
  t: { after: (f: () => unknown) => void },
  answer: (body: Record<string, unknown>, res: ServerResponse) => void,
): Promise<{ url: string; seen: Record<string, unknown>[] }> {
  const seen: Record<string, unknown>[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    let text = '';
    req.on('data', (d) => {
      text += d;
    });
    req.on('end', () => {
      const body = JSON.parse(text);
      seen.push(body);
      answer(body, res);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/auth`, seen };
}

test('chain order: HTTP first (deny wins over a user the users file knows; ignore passes to the users file); no answer = deny', {
  timeout: T,
}, async (t) => {
  const http = await authServer(t, (body, res) => {
    if (body.username === 'hang') return; // never answers
    const result = body.username === 'bob' ? 'deny' : body.username === 'web' ? 'allow' : 'ignore';
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ result }));
  });
  const file = usersFile(dir, 'chain.json', [
    ['alice', 'pw'],
    ['bob', 'pw'],
  ]);
  const broker = await startBroker(t, {
    'auth.chain': 'http,built_in_database',
    'auth.http.url': http.url,
    'auth.http.timeout': 0.5,
    'auth.users_file': file,
    'auth.allow_anonymous': false,
  });
  assert.equal(await connectCode(broker, { clientId: 'h1', username: 'alice', password: 'pw' }), 0);
  assert.equal(await connectCode(broker, { clientId: 'h2', username: 'bob', password: 'pw' }), 4);
  assert.equal(await connectCode(broker, { clientId: 'h3', username: 'web', password: 'anything' }), 0);
  assert.equal(
    await connectCode(broker, { clientId: 'h4', username: 'hang', password: 'x', protocolVersion: 5 }),
    0x86,
  );
  const alice = http.seen.find((b) => b.username === 'alice');
  assert.deepEqual(alice, { clientid: 'h1', username: 'alice', password: 'pw', peerhost: '127.0.0.1' });
});

test('HTTP auth server down (connection refused): a deny, CONNACK 4 / 0x86, counted as a failure', {
  timeout: T,
}, async (t) => {
  // A port with nothing listening on it: bound, then closed.
  const gone = createServer();
  gone.listen(0, '127.0.0.1');
  await once(gone, 'listening');
  const port = (gone.address() as AddressInfo).port;
  await new Promise((r) => gone.close(r));
  const broker = await startBroker(t, {
    'auth.http.url': `http://127.0.0.1:${port}/auth`,
    'auth.http.timeout': 2,
    'auth.allow_anonymous': true, // a deny is a deny: anonymous access does not let the client in
  });
  assert.equal(await connectCode(broker, { clientId: 'd1', username: 'u', password: 'p' }), 4);
  assert.equal(
    await connectCode(broker, { clientId: 'd2', username: 'u', password: 'p', protocolVersion: 5 }),
    0x86,
  );
  assert.equal(broker.counters.total(Counter.authnFailure), 2);
  assert.equal(broker.counters.total(Counter.sessionCreated), 0);
});

test('async hook: an answer later is waited for, no answer within auth.timeout is refused and counted, a throwing hook denies', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, {
    'hooks.modules': hookFixture('slow-auth.mjs'),
    'auth.timeout': 0.3,
    'auth.allow_anonymous': false,
  });
  assert.equal(await connectCode(broker, { clientId: 's1', username: 'later' }), 0);
  assert.equal(await connectCode(broker, { clientId: 's2', username: 'never', protocolVersion: 5 }), 0x87);
  assert.equal(broker.counters.total(Counter.authnTimeouts), 1);
  assert.equal(await connectCode(broker, { clientId: 's3', username: 'thrower' }), 4);
  assert.equal(broker.counters.total(Counter.hookErrors), 1);
  // The broker still serves.
  assert.equal(await connectCode(broker, { clientId: 's4', username: 'later' }), 0);
});

test('auth.clientid_must_match_username: another user cannot take over a session by its client id [MQTT-3.1.4-2]', {
  timeout: T,
}, async (t) => {
  const file = usersFile(dir, 'takeover.json', [
    ['alice', 'a'],
    ['bob', 'b'],
  ]);
  const broker = await startBroker(t, {
    'auth.users_file': file,
    'auth.allow_anonymous': false,
    'auth.clientid_must_match_username': true,
  });
  const { c: alice } = await client5(t, broker, { clientId: 'alice', username: 'alice', password: 'a' });
  let aliceClosed = false;
  alice.on('close', () => {
    aliceClosed = true;
  });
  assert.equal(
    await connectCode(broker, { clientId: 'alice', username: 'bob', password: 'b', protocolVersion: 5 }),
    0x87,
  );
  assert.equal(await connectCode(broker, { clientId: 'alice', username: 'bob', password: 'b' }), 5);
  assert.equal(broker.counters.total(Counter.sessionTakenover), 0);
  // Alice is still connected: a ping round trip works.
  await new Promise<void>((resolve) => {
    alice.once('packetreceive', (p) => p.cmd === 'pingresp' && resolve());
    alice.sendPing();
  });
  assert.equal(aliceClosed, false);
  await waitFor(() => broker.counters.total(Counter.authnFailure) === 2, 'failures counted');
});

test('banned clients (REST /api/v5/banned): by IP CIDR, client id and username, with expiry; CONNACK 0x8A / 5', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t);
  assert.equal(
    (await api(broker, 'POST', '/banned', { body: { as: 'peerhost_net', who: 'nonsense' } })).status,
    400,
  );
  const ban = await api(broker, 'POST', '/banned', {
    body: { as: 'peerhost_net', who: '127.0.0.0/8', reason: 'test' },
  });
  assert.equal(ban.status, 200);
  await eventually(
    async () => (await connectCode(broker, { clientId: 'b1', protocolVersion: 5 })) === 0x8a,
    'IP ban in force',
  );
  assert.equal(await connectCode(broker, { clientId: 'b2' }), 5);
  assert.equal((await api(broker, 'GET', '/banned')).json.data.length, 1);
  assert.equal(
    (await api(broker, 'DELETE', `/banned/peerhost_net/${encodeURIComponent('127.0.0.0/8')}`)).status,
    204,
  );
  await eventually(async () => (await connectCode(broker, { clientId: 'b3' })) === 0, 'IP ban lifted');
  // A client-id ban that expires: refused until `until`, then let in again.
  const until = Date.now() + 1500;
  await api(broker, 'POST', '/banned', { body: { as: 'clientid', who: 'b4', until: until / 1000 } });
  await api(broker, 'POST', '/banned', { body: { as: 'username', who: 'evil' } });
  await eventually(
    async () => (await connectCode(broker, { clientId: 'b4' })) === 5,
    'client id ban in force',
  );
  assert.equal(await connectCode(broker, { clientId: 'b5', username: 'evil', protocolVersion: 5 }), 0x8a);
  assert.equal(await connectCode(broker, { clientId: 'b5', username: 'good' }), 0);
  await untilPast(until, 'ban expiry');
  assert.equal(await connectCode(broker, { clientId: 'b4' }), 0);
  assert.ok(broker.counters.total(Counter.bannedRefused) >= 4);
});

test('k8s/emqx-ts.yaml runs with auth.allow_anonymous=false and the users file from the emqx-ts-users Secret', () => {
  const yaml = readFileSync(new URL('../k8s/emqx-ts.yaml', import.meta.url), 'utf8');
  const envValue = (name: string): string | undefined =>
    new RegExp(`- name: ${name}\\s*\\n\\s*value: "?([^"\\n]+)"?`).exec(yaml)?.[1];
  const env = {
    EMQX_AUTH__ALLOW_ANONYMOUS: envValue('EMQX_AUTH__ALLOW_ANONYMOUS'),
    EMQX_AUTH__USERS_FILE: envValue('EMQX_AUTH__USERS_FILE'),
  };
  const cfg = loadConfig({ env });
  assert.equal(cfg['auth.allow_anonymous'], false);
  const file = cfg['auth.users_file'];
  assert.ok(file.endsWith('.json'), file);
  // The file's directory is the mount of the users Secret.
  const mount = /- \{ name: users, mountPath: ([^,\s]+)/.exec(yaml)?.[1];
  assert.equal(mount, dirname(file));
  assert.match(yaml, /- name: users\s*\n\s*secret: \{ secretName: emqx-ts-users \}/);
});

test('async authentication (hash pool): packets pipelined behind CONNECT are served after CONNACK; behind a refused CONNECT they are never routed [MQTT-3.2.2-6]', {
  timeout: T,
}, async (t) => {
  const file = usersFile(dir, 'pipelined.json', [['pipe', 'pw']]);
  const broker = await startBroker(t, { 'auth.users_file': file, 'auth.allow_anonymous': false });
  const sub = rawFrame(0x82, [0, 1], mqttString('pipe/t'), [0]);
  const pub = (payload: string) => rawFrame(0x30, mqttString('pipe/t'), payload);
  const ok = await RawClient.connect(t, broker.port);
  ok.send(
    Buffer.concat([
      connectFrame({ clientId: 'pipe1', username: 'pipe', password: 'pw' }),
      sub,
      pub('hi'),
      Buffer.from([0xc0, 0]),
    ]),
  );
  assert.deepEqual([...(await ok.read(4))], [0x20, 2, 0, 0]);
  // SUBACK, the PUBLISH and PINGRESP, in any order: SUBACK waits for main's retained lookup, and
  // a matching PUBLISH may come before it (MQTT 3.8.4 permits it).
  const frames = [await readFrame(ok), await readFrame(ok), await readFrame(ok)];
  assert.deepEqual(
    frames.map((f) => f.type).sort((x, y) => x - y),
    [3, 9, 13],
  );
  const msg = frames.find((f) => f.type === 3)!;
  assert.ok(msg.body.subarray(2 + 'pipe/t'.length).equals(Buffer.from('hi')));

  // A wrong password: CONNACK 4 and close; the pipelined PUBLISH never reaches the subscriber.
  const bad = await RawClient.connect(t, broker.port);
  bad.send(
    Buffer.concat([connectFrame({ clientId: 'pipe2', username: 'pipe', password: 'no' }), pub('bad')]),
  );
  assert.deepEqual([...(await bad.read(4))], [0x20, 2, 0, 4]);
  await bad.waitClosed();
  ok.send(pub('after'));
  const next = await readFrame(ok);
  assert.ok(next.body.subarray(2 + 'pipe/t'.length).equals(Buffer.from('after')), next.body.toString());
});

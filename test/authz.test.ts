/**
 * Authorization (src/authz) and message hooks (src/hooks), issue #12, over real sockets: an ACL
 * file in EMQX acl.conf syntax with ${clientid}/${username} placeholders, `eq`, CIDR, first match
 * wins and authz.no_match; $SYS protection; denied SUBSCRIBE 0x87 (3.x 0x80) and PUBLISH (MQTT 5
 * PUBACK 0x87, 3.x acknowledged and dropped); deny_action disconnect; the per-client cache; a
 * JWT acl claim; hooks that modify and drop messages, from config and from Broker.start.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { SignJWT } from 'jose';
import type { MqttClient } from 'mqtt';
import type { IPublishPacket, Packet } from 'mqtt-packet';
import { hashPassword } from '../src/auth/hash.js';
import { parseAcl } from '../src/authz/acl-file.js';
import { filterCovers } from '../src/authz/match.js';
import { Counter } from '../src/metrics/counters.js';
import { authTempDir, hookFixture, pubackCodes } from './helpers/auth.js';
import {
  client,
  client5,
  clientWithInbox,
  closed,
  publish,
  publish5,
  startBroker,
  startBrokerWith,
  subscribe,
  subscribe5,
  sync,
  within,
} from './helpers/broker.js';
import { scrape } from './helpers/ops.js';

const T = 60_000;
const dir = authTempDir('emqx-ts-authz-');

const ACL = `
%% test ACL (EMQX acl.conf syntax)
{allow, {username, "admin"}, subscribe, ["$SYS/#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, all, publish, ["dev/\${clientid}/#"]}.
{allow, {username, {re, "^u"}}, subscribe, ["users/\${username}/#", "dev/+/#"]}.
{allow, {ipaddr, "127.0.0.0/8"}, all, ["lo/#"]}.
{allow, {clientid, "boss"}, all, ["#"]}.
{deny, all}.
`;

/** SUBACK return/reason codes as sent (mqtt.js turns an MQTT 5 failure code into an error). */
function subCodes(c: MqttClient, filters: string | string[], qos: 0 | 1 = 0): Promise<number[]> {
  return within(
    new Promise<number[]>((resolve) => {
      const onPacket = (p: Packet): void => {
        if (p.cmd !== 'suback') return;
        c.removeListener('packetreceive', onPacket);
        resolve(p.granted as number[]);
      };
      c.on('packetreceive', onPacket);
      c.subscribe(filters, { qos }, () => {});
    }),
    'SUBACK',
  );
}

function aclFile(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

test('filter coverage: + and # in rules, $ topics, filters as targets', () => {
  assert.ok(filterCovers('a/#', 'a'));
  assert.ok(filterCovers('a/#', 'a/b/c'));
  assert.ok(filterCovers('a/+/c', 'a/+/c'));
  assert.ok(filterCovers('a/+', 'a/b'));
  assert.ok(!filterCovers('a/+', 'a/#'), 'a/+ does not cover a/#');
  assert.ok(!filterCovers('a/+', 'a/b/c'));
  assert.ok(!filterCovers('#', '$SYS/x'), 'wildcard-first rule does not cover $ topics [MQTT-4.7.2-1]');
  assert.ok(filterCovers('$SYS/#', '$SYS/brokers'));
  assert.throws(() => parseAcl('{allow, all, publish, "notalist"}.'), /list/);
  assert.throws(() => parseAcl('{allow, all}'), /expected \./);
});

test('ACL file: placeholders, eq, CIDR, first match wins; SUBACK 0x87 (v5) / 0x80 (3.x) [MQTT-3.9.3-1]', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'authz.acl_file': aclFile('a.conf', ACL) });
  const { c: u5 } = await client5(t, broker, { clientId: 'u5', username: 'ursula' });
  // users/${username}/# and dev/+/# allowed for usernames matching ^u; lo/# by IP; "#" (eq) denied.
  assert.deepEqual(
    await subCodes(u5, ['users/ursula/x', 'users/other/x', 'dev/u5/t', 'lo/a', '#'], 1),
    [1, 0x87, 1, 1, 0x87],
  );
  const v3 = await client(t, broker, { clientId: 'v3', username: 'victor' });
  assert.deepEqual(await subCodes(v3, ['users/victor/x', 'lo/b'], 1), [0x80, 1]);
  const denials = broker.counters.total(Counter.subscribeAuthError);
  assert.equal(denials, 3);
  // PUBLISH: dev/${clientid}/# only for the client's own id; v5 gets PUBACK 0x87 [MQTT-3.4.2-1].
  const acks = await pubackCodes(u5, ['dev/u5/temp', 'dev/v3/temp']);
  // 0x10: accepted, no matching subscribers [MQTT-3.4.2-1]; 0x87: not authorized.
  assert.deepEqual(acks, [0x10, 0x87]);
  assert.equal(broker.counters.total(Counter.publishAuthError), 1);
  const s = await scrape(broker);
  assert.equal(s.get('emqx_packets_publish_auth_error'), 1);
  assert.ok(s.get('emqx_authorization_deny') >= 4);
  assert.ok(s.get('emqx_authorization_allow') >= 4);
});

test('MQTT 3.1.1: a denied PUBLISH is acknowledged and not delivered [MQTT-3.3.5-2]; the cache answers repeats', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'authz.acl_file': aclFile('b.conf', ACL) });
  const { c: sub, inbox } = await clientWithInbox(t, broker, { clientId: 'boss' });
  await subscribe(sub, 'dev/#', 1);
  const pub = await client(t, broker, { clientId: 'p1' });
  await publish(pub, 'dev/someone-else/x', 'denied', { qos: 1 }); // PUBACK came back
  await publish(pub, 'dev/someone-else/x', 'denied again', { qos: 2 }); // PUBREC/PUBCOMP completed
  await publish(pub, 'dev/p1/x', 'allowed', { qos: 1 });
  await inbox.wait(1);
  await sync(sub, sub, inbox, 'dev/boss/sync');
  assert.deepEqual(
    inbox.messages.map((m) => m.payload),
    ['allowed'],
  );
  assert.equal(broker.counters.total(Counter.publishAuthError), 2);
  assert.ok(broker.counters.total(Counter.authzCacheHit) >= 1, 'the second denial came from the cache');
});

test('$SYS/# is readable only by users granted it when anonymous access is off', {
  timeout: T,
}, async (t) => {
  const users = join(dir, 'sys-users.json');
  writeFileSync(
    users,
    JSON.stringify([
      { username: 'admin', password_hash: hashPassword('a', 'sha256'), is_superuser: false },
      { username: 'plain', password_hash: hashPassword('p', 'sha256'), is_superuser: false },
      { username: 'root', password_hash: hashPassword('r', 'sha256'), is_superuser: true },
    ]),
  );
  const broker = await startBroker(t, {
    'auth.users_file': users,
    'auth.allow_anonymous': false,
    'authz.acl_file': aclFile('sys.conf', '{allow, {username, "admin"}, subscribe, ["$SYS/#"]}.\n'),
  });
  const { c: plain } = await client5(t, broker, { clientId: 'plain', username: 'plain', password: 'p' });
  assert.deepEqual(await subCodes(plain, ['$SYS/#', 'ordinary/#']), [0x87, 0]);
  const { c: admin } = await client5(t, broker, { clientId: 'admin', username: 'admin', password: 'a' });
  assert.deepEqual(await subCodes(admin, '$SYS/#'), [0]);
  const { c: root } = await client5(t, broker, { clientId: 'root', username: 'root', password: 'r' });
  assert.deepEqual(await subCodes(root, '$SYS/brokers/#'), [0], 'a superuser may subscribe to anything');
});

test('authz.deny_action disconnect: a denied PUBLISH closes the connection (MQTT 5: DISCONNECT 0x87)', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, {
    'authz.acl_file': aclFile('d.conf', ACL),
    'authz.deny_action': 'disconnect',
  });
  const { c } = await client5(t, broker, { clientId: 'dd' });
  let reason = -1;
  c.on('packetreceive', (p: Packet) => {
    if (p.cmd === 'disconnect') reason = p.reasonCode ?? 0;
  });
  const gone = closed(c);
  c.publish('not/allowed', 'x', { qos: 0 });
  await gone;
  assert.equal(reason, 0x87);
});

test('JWT acl claim: allowed topics only, with placeholders; the rest falls to no_match deny', {
  timeout: T,
}, async (t) => {
  const secret = 'claims-secret';
  const broker = await startBroker(t, { 'auth.jwt.secret': secret, 'authz.no_match': 'deny' });
  const token = await new SignJWT({ acl: { pub: [`out/$${'{clientid}'}`], sub: ['in/#'] } })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(secret));
  const { c } = await client5(t, broker, { clientId: 'jc', username: 'jc', password: token });
  assert.deepEqual(await subCodes(c, ['in/x', 'other/x']), [0, 0x87]);
  assert.deepEqual(await pubackCodes(c, ['out/jc', 'out/other']), [0x10, 0x87]);
});

test('JWT claims as ACL placeholders (jwt.<claim>) in the ACL file and in the acl claim; a missing claim matches nothing', {
  timeout: T,
}, async (t) => {
  const secret = 'placeholder-secret';
  const acl = join(dir, 'jwt-claims.conf');
  writeFileSync(acl, `{allow, all, subscribe, ["tenants/$${'{jwt.tenant}'}/#"]}.\n{deny, all}.\n`);
  const broker = await startBroker(t, {
    'auth.jwt.secret': secret,
    'authz.acl_file': acl,
    'authz.no_match': 'deny',
  });
  const sign = (claims: Record<string, unknown>) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));
  const token = await sign({ tenant: 'acme', acl: { pub: [`out/$${'{jwt.tenant}'}/#`] } });
  const { c } = await client5(t, broker, { clientId: 'jt1', username: 'u1', password: token });
  assert.deepEqual(await subCodes(c, ['tenants/acme/x', 'tenants/other/x']), [0, 0x87]);
  assert.deepEqual(await pubackCodes(c, ['out/acme/1', 'out/other/1']), [0x10, 0x87]);
  // No tenant claim: the rule with ${jwt.tenant} does not apply, so it is not "tenants//#" either.
  const { c: none } = await client5(t, broker, { clientId: 'jt2', username: 'u2', password: await sign({}) });
  assert.deepEqual(await subCodes(none, ['tenants/acme/x', 'tenants//x']), [0x87, 0x87]);
});

test('hooks: onPublish modifies a message (payload, topic) and drops another; from hooks.modules', {
  timeout: T,
}, async (t) => {
  const broker = await startBroker(t, { 'hooks.modules': hookFixture('rewrite.mjs') });
  const { c: sub, inbox } = await client5(t, broker, { clientId: 'hs' });
  await subscribe5(sub, 'hook/#', { qos: 1 });
  const { c: pub } = await client5(t, broker, { clientId: 'hp' });
  await publish5(pub, 'hook/drop', 'gone', { qos: 1 });
  await publish5(pub, 'hook/upper/a', 'shout', { qos: 1 });
  await publish5(pub, 'hook/move', 'moved', { qos: 0 });
  const got = await inbox.wait(2);
  const seen = got.map((p: IPublishPacket) => `${p.topic}=${p.payload.toString()}`);
  assert.deepEqual(seen, ['hook/upper/a=SHOUT', 'hook/moved=moved']);
  assert.equal(broker.counters.total(Counter.hookDropped), 1);
});

test('hooks: Broker.start({ hooks: [module URL] }) installs them in every shard; objects are refused', {
  timeout: T,
}, async (t) => {
  await assert.rejects(
    startBrokerWith(t, { hooks: [{ id: 'x' } as unknown as string] }),
    /module paths or URLs/,
  );
  const broker = await startBrokerWith(t, { hooks: [pathToFileURL(hookFixture('rewrite.mjs'))] });
  // Subscriber and publisher on both shards: each shard runs the hook.
  for (const id of ['e1', 'e2', 'e3', 'e4']) {
    const { c, inbox } = await client5(t, broker, { clientId: `sub-${id}` });
    await subscribe5(c, `hook/upper/${id}`);
    const { c: p } = await client5(t, broker, { clientId: `pub-${id}` });
    await publish5(p, `hook/upper/${id}`, 'quiet', { qos: 1 });
    const [m] = await within(inbox.wait(1), 'hooked message');
    assert.equal(m.payload.toString(), 'QUIET');
  }
});

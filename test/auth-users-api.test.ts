/**
 * REST user management of the built-in database (issue #12):
 * `/api/v5/authentication/password_based:built_in_database/users` add/list/get/update/delete,
 * each change written to auth.users_file and in force in every shard without a restart (clients
 * whose ids hash to each shard connect over real sockets), surviving a shard restart and a
 * broker restart; an unwritable file fails the request and changes nothing.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Counter } from '../src/metrics/counters.js';
import { authTempDir, connectCode, eventually, usersFile } from './helpers/auth.js';
import { idOnShard, startBroker, waitFor } from './helpers/broker.js';
import { api } from './helpers/ops.js';

const T = 90_000;
const USERS = '/authentication/password_based:built_in_database/users';

/** The CONNACK return code of `username`/`password` from the shard owning each of these client ids. */
async function codesOnEveryShard(
  broker: Parameters<typeof connectCode>[0],
  prefix: string,
  username: string,
  password: string,
): Promise<number[]> {
  const codes: number[] = [];
  for (let shard = 0; shard < broker.shardCount; shard++) {
    const clientId = idOnShard(broker, shard, `${prefix}${shard}`);
    codes.push(await connectCode(broker, { clientId, username, password }));
  }
  return codes;
}

/** Let in by every shard (3.1.1 return code 0). */
const inOnEveryShard = async (b: Parameters<typeof connectCode>[0], prefix: string, u: string, p: string) =>
  (await codesOnEveryShard(b, prefix, u, p)).every((c) => c === 0);
/** Refused by every shard with bad credentials (3.1.1 return code 4). */
const refusedOnEveryShard = async (
  b: Parameters<typeof connectCode>[0],
  prefix: string,
  u: string,
  p: string,
) => (await codesOnEveryShard(b, prefix, u, p)).every((c) => c === 4);

/** What went wrong when a code differs: hook errors (a failed hash-pool task is one) and auth timeouts. */
const counters = (b: Parameters<typeof connectCode>[0]): string =>
  `hookErrors ${b.counters.total(Counter.hookErrors)}, authnTimeouts ${b.counters.total(Counter.authnTimeouts)}`;

test('REST users: add, list, get, update, delete take effect in every shard without a restart and are written to the users file', {
  timeout: T,
}, async (t) => {
  const dir = authTempDir('emqx-ts-users-api-');
  const file = usersFile(dir, 'users.json', [['alice', 'a']]);
  const broker = await startBroker(t, {
    'auth.users_file': file,
    'auth.allow_anonymous': false,
    'auth.password_hash': 'sha256', // fast for the test; pbkdf2 is the default
  });
  assert.equal(broker.shardCount, 2);
  assert.deepEqual(
    await codesOnEveryShard(broker, 'pre', 'bob', 'bob-first-pw'),
    [4, 4],
    'bob unknown before he is added',
  );

  // Add: 201, then in force on both shards; a second add is 409; bad bodies are 400.
  const added = await api(broker, 'POST', USERS, { body: { user_id: 'bob', password: 'bob-first-pw' } });
  assert.equal(added.status, 201);
  assert.deepEqual(added.json, { user_id: 'bob', is_superuser: false });
  await eventually(() => inOnEveryShard(broker, 'add', 'bob', 'bob-first-pw'), 'bob let in by every shard');
  assert.equal((await api(broker, 'POST', USERS, { body: { user_id: 'bob', password: 'x' } })).status, 409);
  for (const body of [
    { user_id: '', password: 'x' },
    { user_id: 'carol' },
    { user_id: 'a,b', password: 'x' },
    { user_id: 'carol', password: 'x', is_superuser: 'yes' },
    'not json',
  ])
    assert.equal((await api(broker, 'POST', USERS, { body })).status, 400, JSON.stringify(body));

  // Persisted: the file holds a salted hash, never the password.
  const stored = JSON.parse(readFileSync(file, 'utf8')) as { username: string; password_hash: string }[];
  const bob = stored.find((u) => u.username === 'bob');
  assert.ok(bob?.password_hash.startsWith('$sha256$'), bob?.password_hash);
  // A long password: 'b1' turned up by chance in the two base64 salts and hashes (~3 % of runs)
  assert.ok(!readFileSync(file, 'utf8').includes('bob-first-pw'));
  assert.deepEqual(
    stored.map((u) => u.username),
    ['alice', 'bob'],
  );

  // List (paging, like_user_id) and get.
  const list = await api(broker, 'GET', `${USERS}?limit=1&page=2`);
  assert.equal(list.status, 200);
  assert.deepEqual(list.json, {
    data: [{ user_id: 'bob', is_superuser: false }],
    meta: { page: 2, limit: 1, count: 2 },
  });
  assert.deepEqual((await api(broker, 'GET', `${USERS}?like_user_id=li`)).json.data, [
    { user_id: 'alice', is_superuser: false },
  ]);
  assert.deepEqual((await api(broker, 'GET', `${USERS}/bob`)).json, { user_id: 'bob', is_superuser: false });
  assert.equal((await api(broker, 'GET', `${USERS}/nobody`)).status, 404);

  // Update the password: the old one is refused and the new one let in, on every shard.
  const put = await api(broker, 'PUT', `${USERS}/bob`, {
    body: { password: 'bob-second-pw', is_superuser: true },
  });
  assert.equal(put.status, 200);
  assert.deepEqual(put.json, { user_id: 'bob', is_superuser: true });
  await eventually(
    () => refusedOnEveryShard(broker, 'old', 'bob', 'bob-first-pw'),
    'old password refused everywhere',
  );
  assert.deepEqual(await codesOnEveryShard(broker, 'new', 'bob', 'bob-second-pw'), [0, 0], counters(broker));
  assert.equal((await api(broker, 'PUT', `${USERS}/bob`, { body: {} })).status, 400);
  assert.equal((await api(broker, 'PUT', `${USERS}/nobody`, { body: { password: 'x' } })).status, 404);

  // A restarted shard gets the current users (the file, then main's list before it accepts).
  const shard0 = broker.supervisor.shards[0];
  const generation = shard0.generation;
  broker.supervisor.post(0, { t: 'crash' });
  await waitFor(
    () => shard0.generation > generation && shard0.ready && shard0.worker !== null,
    'shard 0 restarted',
  );
  await eventually(
    () => inOnEveryShard(broker, 'restarted', 'bob', 'bob-second-pw'),
    'bob after a shard restart',
  );

  // Delete: 204, refused everywhere, gone from the file; a second delete is 404.
  assert.equal((await api(broker, 'DELETE', `${USERS}/bob`)).status, 204);
  await eventually(
    () => refusedOnEveryShard(broker, 'del', 'bob', 'bob-second-pw'),
    'bob refused everywhere',
  );
  assert.equal((await api(broker, 'DELETE', `${USERS}/bob`)).status, 404);
  assert.deepEqual(
    (JSON.parse(readFileSync(file, 'utf8')) as { username: string }[]).map((u) => u.username),
    ['alice'],
  );
  assert.deepEqual(
    await codesOnEveryShard(broker, 'alice', 'alice', 'a'),
    [0, 0],
    'the other user is untouched',
  );
});

test('REST users: a user added over REST is in the file a restarted broker reads (CSV form)', {
  timeout: T,
}, async (t) => {
  const dir = authTempDir('emqx-ts-users-api-');
  const file = usersFile(dir, 'users.csv', [['alice', 'a']]);
  const config = { 'auth.users_file': file, 'auth.allow_anonymous': false, 'auth.password_hash': 'sha256' };
  const first = await startBroker(t, config);
  assert.equal(
    (await api(first, 'POST', USERS, { body: { user_id: 'dave', password: 'd', is_superuser: true } }))
      .status,
    201,
  );
  await first.stop();
  assert.match(readFileSync(file, 'utf8'), /^dave,\$sha256\$[^,]+,true$/m);
  const second = await startBroker(t, config);
  assert.deepEqual(await codesOnEveryShard(second, 'csv', 'dave', 'd'), [0, 0], counters(second));
  assert.deepEqual((await api(second, 'GET', `${USERS}/dave`)).json, { user_id: 'dave', is_superuser: true });
});

test('REST users: an unwritable users file fails the request (500) and changes nothing; no users file is 404', {
  timeout: T,
}, async (t) => {
  const dir = authTempDir('emqx-ts-users-api-');
  const sub = join(dir, 'gone');
  mkdirSync(sub);
  const file = usersFile(dir, 'gone/users.json', [['alice', 'a']]);
  const broker = await startBroker(t, {
    'auth.users_file': file,
    'auth.allow_anonymous': false,
    'auth.password_hash': 'sha256',
  });
  // The directory disappears under the running broker: writing the file fails (even as root).
  rmSync(sub, { recursive: true });
  const res = await api(broker, 'POST', USERS, { body: { user_id: 'erin', password: 'e' } });
  assert.equal(res.status, 500);
  assert.match(res.json.message, /users file not written/);
  assert.equal((await api(broker, 'GET', `${USERS}/erin`)).status, 404);
  assert.equal((await api(broker, 'DELETE', `${USERS}/alice`)).status, 500);
  assert.deepEqual(await codesOnEveryShard(broker, 'erin', 'erin', 'e'), [4, 4], counters(broker));
  assert.deepEqual(
    await codesOnEveryShard(broker, 'alice', 'alice', 'a'),
    [0, 0],
    'alice still in: the delete did not happen',
  );
  assert.equal(broker.counters.total(Counter.threadMessageErrors), 0);

  const plain = await startBroker(t);
  const none = await api(plain, 'GET', USERS);
  assert.equal(none.status, 404);
  assert.match(none.json.message, /not configured/);
});

/**
 * Configuration reload (SIGHUP → Broker.reload) and the operating behaviour of the real CLI
 * process: structured JSON logs (one line per connection event and per error, with client id
 * and shard, never one per message), SIGHUP, and a graceful SIGTERM.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { packageRoot } from '../src/paths.js';
import {
  client,
  closed,
  exited,
  Inbox,
  idOnShard,
  LineReader,
  PacketClient,
  publish,
  startBroker,
  subscribe,
  TEST_HTTP_DEFAULTS,
  TEST_HTTP_FLAGS,
  waitForMessage,
} from './helpers/broker.js';
import { api } from './helpers/ops.js';

function configFile(content: unknown): { path: string; write(c: unknown): void } {
  const path = join(mkdtempSync(join(tmpdir(), 'emqx-ts-reload-')), 'broker.json');
  const write = (c: unknown) => writeFileSync(path, typeof c === 'string' ? c : JSON.stringify(c));
  write(content);
  return { path, write };
}

test('reload applies runtime options in main and every shard, reports restart-only ones, rejects bad values', async (t) => {
  const file = configFile({ log: { level: 'silent' }, mqtt: { max_packet_size: 100_000 } });
  const broker = await Broker.start({
    argv: ['--config', file.path],
    config: { ...TEST_HTTP_DEFAULTS, 'listener.host': '127.0.0.1', 'listener.port': 0, 'node.shards': 2 },
  });
  t.after(() => broker.stop());
  const big = 'x'.repeat(2000);
  const sub = await client(t, broker, { clientId: 'rl-sub' });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'big/#', 0);
  const before = await client(t, broker, { clientId: 'rl-before' });
  await publish(before, 'big/1', big, { qos: 1 });
  await waitForMessage(inbox, (m) => m.topic === 'big/1');

  file.write({ log: { level: 'fatal' }, mqtt: { max_packet_size: 1024 }, listener: { backlog: 7 } });
  const diff = await broker.reload();
  assert.deepEqual(diff.applied.sort(), ['log.level', 'mqtt.max_packet_size']);
  assert.deepEqual(diff.needRestart, ['listener.backlog']);
  assert.equal(broker.config['mqtt.max_packet_size'], 1024);
  assert.equal(broker.config['listener.backlog'], 1024, 'restart-only options keep their value');
  assert.equal(broker.log.level, 'fatal');

  // A connection made after the reload is held to the new limit by its shard (a 2000-byte
  // PUBLISH closes it), whichever shard it lands on.
  for (const id of ['rl-after-a', 'rl-after-b', 'rl-after-c']) {
    const { pc } = await PacketClient.connect(t, broker, id);
    pc.send({ cmd: 'publish', topic: 'big/2', payload: big, qos: 0, retain: false, dup: false });
    await pc.waitClosed();
  }
  assert.ok(broker.counters.snapshot().oversizedPackets >= 3);

  // A wrong value or an unknown key: reload fails with a clear error, nothing changes.
  file.write({ mqtt: { max_inflight: 'lots' } });
  await assert.rejects(
    broker.reload(),
    (e) => e instanceof ConfigError && /mqtt\.max_inflight/.test(e.message),
  );
  file.write({ mqtt: { max_inflihgt: 5 } });
  await assert.rejects(
    broker.reload(),
    (e) => e instanceof ConfigError && /unknown option 'mqtt\.max_inflihgt'/.test(e.message),
  );
  file.write('{ not json');
  await assert.rejects(broker.reload(), ConfigError);
  assert.equal(broker.config['mqtt.max_packet_size'], 1024);
  assert.equal(broker.log.level, 'fatal');

  // Limits can go back up at runtime too.
  file.write({ log: { level: 'silent' }, mqtt: { max_packet_size: 100_000 } });
  assert.ok((await broker.reload()).applied.includes('mqtt.max_packet_size'));
  const again = await client(t, broker, { clientId: 'rl-again' });
  await publish(again, 'big/3', big, { qos: 1 });
  await waitForMessage(inbox, (m) => m.topic === 'big/3');
});

test('reload can rotate the REST API key', async (t) => {
  const file = configFile({ api: { key: 'k1', secret: 'secret-one' } });
  const broker = await Broker.start({
    argv: ['--config', file.path],
    config: { ...TEST_HTTP_DEFAULTS, 'listener.port': 0, 'node.shards': 1, 'log.level': 'silent' },
  });
  t.after(() => broker.stop());
  assert.equal((await api(broker, 'GET', '/status')).status, 200);
  const old = `Basic ${Buffer.from('k1:secret-one').toString('base64')}`;
  file.write({ api: { key: 'k2' }, mqtt: { max_inflight: 7 } });
  await assert.rejects(broker.reload(), /api\.key.*api\.secret/);
  assert.equal(broker.config['mqtt.max_inflight'], 32, 'a failed reload changes nothing');
  assert.equal((await api(broker, 'GET', '/status', { auth: old })).status, 200);
  file.write({ api: { key: 'k2', secret: 'secret-two' } });
  await broker.reload();
  assert.equal((await api(broker, 'GET', '/status', { auth: old })).status, 401);
  assert.equal((await api(broker, 'GET', '/status')).status, 200, 'the new pair works');
});

test('CLI: JSON logs per connection event and error, SIGHUP changes the level, SIGTERM drains and exits 0', async (t) => {
  const file = configFile({ log: { level: 'info' } });
  const root = packageRoot();
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/main.ts',
      '--config',
      file.path,
      '--port',
      '0',
      '--host',
      '127.0.0.1',
      '--shards',
      '2',
      ...TEST_HTTP_FLAGS,
    ],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const out = new LineReader(child.stdout);
  const err = new LineReader(child.stderr);
  const json = (line: string) => {
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      return {};
    }
  };
  const listening = json(await out.waitFor((l) => json(l).msg === 'listening', 'listening', 30_000));
  const port = listening.port as number;
  const fake = { port } as Broker;

  // One line per connection event, with client id and shard.
  const c1 = await client(t, fake, { clientId: 'cli-1' });
  const connected = json(
    await out.waitFor(
      (l) => json(l).msg === 'client connected' && json(l).clientId === 'cli-1',
      'connect line',
    ),
  );
  assert.equal(typeof connected.shard, 'number');
  assert.equal(connected.level, 30);
  assert.ok(typeof connected.time === 'string');

  // Never one per message: 200 messages, then a connection event as a marker.
  const inbox = new Inbox(c1);
  await subscribe(c1, 'many', 0);
  const linesBefore = out.lines.length;
  for (let i = 0; i < 200; i++) c1.publish('many', String(i), { qos: 0 });
  await inbox.wait(200);
  const c2 = await client(t, fake, { clientId: 'cli-2' });
  await out.waitFor((l) => json(l).clientId === 'cli-2' && json(l).msg === 'client connected', 'marker line');
  assert.ok(
    out.lines.length - linesBefore <= 3,
    `lines during 200 messages: ${out.lines.slice(linesBefore).join('\n')}`,
  );
  c2.end(true);

  // SIGHUP with log.level warn: info lines stop, warnings (an error with client id and shard) stay.
  file.write({ log: { level: 'warn' } });
  child.kill('SIGHUP');
  await out.waitFor((l) => json(l).msg === 'reloading configuration', 'SIGHUP line');
  // Shards accept connections themselves: connect once both say they have the new level.
  for (const shard of [0, 1]) {
    await out.waitFor(
      (l) => json(l).msg === 'configuration reloaded' && json(l).shard === shard,
      `shard ${shard} reload line`,
    );
  }
  const { pc } = await PacketClient.connect(t, fake as Broker, 'cli-3');
  pc.send(Buffer.from([0x30, 0x05, 0x00, 0x03, 0x61, 0x2f, 0x23])); // PUBLISH to 'a/#': a protocol error
  await pc.waitClosed();
  const warn = json(
    await out.waitFor((l) => json(l).clientId === 'cli-3' && json(l).level === 40, 'warning line'),
  );
  assert.equal(typeof warn.shard, 'number');
  assert.ok(
    !out.lines.some((l) => json(l).clientId === 'cli-3' && json(l).msg === 'client connected'),
    'info lines are off after the reload',
  );

  // SIGTERM: graceful stop, clients closed, exit 0.
  child.kill('SIGTERM');
  await closed(c1);
  const { code } = await exited(child, 30_000);
  assert.equal(code, 0, err.text);
});

test('the new options come from the environment (EMQX_ prefix, __ nesting) and flags, validated', () => {
  const cfg = loadConfig({
    env: {
      EMQX_METRICS__PORT: '9100',
      EMQX_SYS_TOPICS__SYS_EVENT_MESSAGES__CLIENT_CONNECTED: 'false',
      EMQX_API__KEY: 'k',
      EMQX_API__SECRET: 's',
    },
    argv: ['--api.port=18084', '--node.shutdown_drain_period', '2.5'],
  });
  assert.equal(cfg['metrics.port'], 9100);
  assert.equal(cfg['sys_topics.sys_event_messages.client_connected'], false);
  assert.equal(cfg['api.key'], 'k');
  assert.equal(cfg['api.port'], 18084);
  assert.equal(cfg['node.shutdown_drain_period'], 2.5);
  assert.equal(cfg['sys_topics.sys_msg_interval'], 60, 'EMQX default: 1 minute');
  assert.throws(() => loadConfig({ argv: ['--metrics.port=70000'] }), /metrics\.port.*between 0 and 65535/);
  assert.throws(() => loadConfig({ env: { EMQX_PROMETHEUS__ENABLE_BASIC_AUTH: 'yes' } }), /true or false/);
});

test('a reload that changes mqtt.output_high_watermark: the shards accept anew with it, and clients are served on both shards', async (t) => {
  const file = configFile({ log: { level: 'silent' }, mqtt: { output_high_watermark: 65536 } });
  const broker = await Broker.start({
    argv: ['--config', file.path],
    config: { ...TEST_HTTP_DEFAULTS, 'listener.host': '127.0.0.1', 'listener.port': 0, 'node.shards': 2 },
  });
  t.after(() => broker.stop());
  file.write({ log: { level: 'silent' }, mqtt: { output_high_watermark: 16384 } });
  const diff = await broker.reload();
  assert.deepEqual(diff.applied, ['mqtt.output_high_watermark']);
  // Each shard's acceptor listens again (a new server created with the new high-water mark);
  // connections for both shards, whichever shard accepts them, still get through.
  const sub = await client(t, broker, { clientId: idOnShard(broker, 0, 'hwm-sub') });
  const inbox = new Inbox(sub);
  await subscribe(sub, 'hwm/#', 0);
  for (let i = 0; i < 6; i++) {
    const pub = await client(t, broker, { clientId: idOnShard(broker, i % 2, `hwm-pub-${i}`) });
    await publish(pub, `hwm/${i}`, 'x', { qos: 1 });
    await waitForMessage(inbox, (m) => m.topic === `hwm/${i}`);
  }
});

test('node.shard_young_generation_mb caps each shard worker young generation; 0 leaves V8 its default', async (t) => {
  const capped = await startBroker(t, { 'node.shards': 2, 'node.shard_young_generation_mb': 6 });
  for (const s of capped.supervisor.shards)
    assert.equal(s.worker?.resourceLimits?.maxYoungGenerationSizeMb, 6);
  const free = await startBroker(t, { 'node.shards': 1, 'node.shard_young_generation_mb': 0 });
  const v8default = free.supervisor.shards[0].worker?.resourceLimits?.maxYoungGenerationSizeMb ?? 0;
  assert.ok(v8default > 6, `V8's own limit (${v8default} MiB) when not capped`);
});

/**
 * Configuration: one schema, sources layered defaults < file < environment < CLI flags <
 * programmatic overrides, every value validated with an error that names the option and where
 * it came from. Real files in a temp directory; no broker needed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, loadConfig, shardCount, usableCpus } from '../src/config/load.js';
import { defaults, SCHEMA } from '../src/config/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileSeq = 0;

/** Writes a config file (an object as JSON, or raw text) and returns its path. */
function file(content: unknown): string {
  const path = join(dir, `config-${++fileSeq}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

function configError(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

const reEscape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

test('precedence: defaults < config file < environment < CLI flags < programmatic overrides', () => {
  const cfgFile = file({ listener: { port: 1001 }, node: { name: 'file@host' }, mqtt: { max_inflight: 7 } });
  const env = { EMQX_LISTENER__PORT: '1002', EMQX_MQTT__MAX_INFLIGHT: '8' };
  const argv = ['--config', cfgFile, '--port', '1003'];

  const d = loadConfig();
  assert.deepEqual(d, defaults());
  assert.equal(d['listener.port'], SCHEMA['listener.port'].default);

  const f = loadConfig({ argv: ['--config', cfgFile] });
  assert.deepEqual([f['listener.port'], f['node.name'], f['mqtt.max_inflight']], [1001, 'file@host', 7]);
  // Keys the file does not set keep their defaults.
  assert.equal(f['listener.host'], SCHEMA['listener.host'].default);

  const e = loadConfig({ argv: ['--config', cfgFile], env });
  assert.deepEqual([e['listener.port'], e['node.name'], e['mqtt.max_inflight']], [1002, 'file@host', 8]);

  const c = loadConfig({ argv, env });
  assert.deepEqual([c['listener.port'], c['node.name'], c['mqtt.max_inflight']], [1003, 'file@host', 8]);

  const o = loadConfig({ argv, env, overrides: { 'listener.port': 1004 } });
  assert.deepEqual([o['listener.port'], o['node.name'], o['mqtt.max_inflight']], [1004, 'file@host', 8]);
  // Overrides may be nested like the file.
  assert.equal(loadConfig({ argv, env, overrides: { listener: { port: 1005 } } })['listener.port'], 1005);
});

test('sources: EMQX_CONFIG names the file, --config beats it; flags by short name or full key', () => {
  const a = file({ node: { name: 'a@host' } });
  const b = file({ node: { name: 'b@host' } });
  assert.equal(loadConfig({ env: { EMQX_CONFIG: a } })['node.name'], 'a@host');
  assert.equal(loadConfig({ env: { EMQX_CONFIG: a }, argv: ['--config', b] })['node.name'], 'b@host');
  assert.equal(loadConfig({ argv: [`--config=${b}`] })['node.name'], 'b@host');

  const cfg = loadConfig({
    argv: ['--port=1884', '--listener.backlog', '64', '--mqtt.mqueue_store_qos0=false'],
  });
  assert.equal(cfg['listener.port'], 1884);
  assert.equal(cfg['listener.backlog'], 64);
  assert.equal(cfg['mqtt.mqueue_store_qos0'], false);
  const valueless = loadConfig({
    env: { EMQX_MQTT__MQUEUE_STORE_QOS0: 'false' },
    argv: ['--mqtt.mqueue_store_qos0', '--port', '1885'],
  });
  assert.equal(valueless['mqtt.mqueue_store_qos0'], true, 'a boolean flag without a value is true');
  assert.equal(valueless['listener.port'], 1885);
  // A later flag wins over an earlier one.
  assert.equal(loadConfig({ argv: ['--port', '1', '--listener.port', '2'] })['listener.port'], 2);
  // A flat key in a file works like a nested one.
  assert.equal(loadConfig({ argv: ['--config', file({ 'listener.port': 1999 })] })['listener.port'], 1999);
});

test('environment: EMQX_ prefix and __ nesting, strings coerced; variables naming no option are ignored', () => {
  const cfg = loadConfig({
    env: {
      EMQX_NODE__SHARDS: '3',
      EMQX_MQTT__MQUEUE_STORE_QOS0: 'false',
      EMQX_MQTT__KEEPALIVE_MULTIPLIER: '2.5',
      EMQX_LOG__LEVEL: 'warn',
      // Kubernetes injects these for a Service named "emqx": not ours, not fatal.
      EMQX_SERVICE_HOST: '10.0.0.1',
      EMQX_PORT: 'tcp://10.0.0.1:1883',
      HOME: '/root',
    },
  });
  assert.equal(cfg['node.shards'], 3);
  assert.equal(cfg['mqtt.mqueue_store_qos0'], false);
  assert.equal(cfg['mqtt.keepalive_multiplier'], 2.5);
  assert.equal(cfg['log.level'], 'warn');
  assert.equal((cfg as Record<string, unknown>).service, undefined);
  configError(
    () => loadConfig({ env: { EMQX_LISTENER__PORT: 'http' } }),
    /^option 'listener\.port' must be a number, got "http" \(from environment EMQX_LISTENER__PORT\)$/,
  );
  configError(
    () => loadConfig({ env: { EMQX_LISTENER__PORT: '' } }),
    /option 'listener\.port' must be a number, got ""/,
  );
  configError(
    () => loadConfig({ env: { EMQX_MQTT__MQUEUE_STORE_QOS0: 'yes' } }),
    /option 'mqtt\.mqueue_store_qos0' must be true or false, got "yes" \(from environment EMQX_MQTT__MQUEUE_STORE_QOS0\)/,
  );
});

test('a config file with a wrong type, an out-of-range value or an unknown key is rejected, naming key and file', () => {
  const cases: [content: unknown, message: string | RegExp][] = [
    [{ listener: { port: 'abc' } }, `option 'listener.port' must be a number, got "abc"`],
    [{ listener: { port: true } }, `option 'listener.port' must be a number, got true`],
    [{ listener: { port: null } }, `option 'listener.port' must be a number, got null`],
    [{ listener: { port: [1883] } }, `option 'listener.port' must be a number, got [1883]`],
    [{ listener: { port: { tcp: 1883 } } }, `option 'listener.port' must be a number, got {"tcp":1883}`],
    [{ listener: { port: 70000 } }, `option 'listener.port' must be between 0 and 65535, got 70000`],
    [{ listener: { port: -1 } }, `option 'listener.port' must be between 0 and 65535, got -1`],
    [{ listener: { port: 1883.5 } }, `option 'listener.port' must be an integer, got 1883.5`],
    [{ mqtt: { max_inflight: 0 } }, `option 'mqtt.max_inflight' must be between 1 and 65535, got 0`],
    [{ node: { shards: 2.5 } }, `option 'node.shards' must be an integer, got 2.5`],
    [{ mqtt: { mqueue_store_qos0: 1 } }, `option 'mqtt.mqueue_store_qos0' must be true or false, got 1`],
    [
      { mqtt: { mqueue_store_qos0: 'maybe' } },
      `option 'mqtt.mqueue_store_qos0' must be true or false, got "maybe"`,
    ],
    [{ listener: { host: 80 } }, `option 'listener.host' must be a string, got 80`],
    [{ log: { level: 'loud' } }, /option 'log\.level' must be one of trace, debug, .*, got 'loud'/],
    [{ nosuch: 1 }, `unknown option 'nosuch'`],
    [{ listener: { nosuch: 1 } }, `unknown option 'listener.nosuch'`],
    [{ foo: { bar: { baz: 1 } } }, `unknown option 'foo.bar.baz'`],
    [{ Listener: { Port: 1 } }, `unknown option 'Listener.Port'`],
  ];
  for (const [content, message] of cases) {
    const path = file(content);
    const re =
      typeof message === 'string'
        ? new RegExp(`^${reEscape(message)} \\(from ${reEscape(path)}\\)$`)
        : message;
    configError(() => loadConfig({ argv: ['--config', path] }), re);
  }
  // Not JSON, or no such file: the file is named.
  const broken = file('{ "listener": { "port": 1883, } }');
  configError(
    () => loadConfig({ argv: ['--config', broken] }),
    new RegExp(`^cannot read config file ${reEscape(broken)}: `),
  );
  const missing = join(dir, 'missing.json');
  configError(
    () => loadConfig({ argv: ['--config', missing] }),
    new RegExp(`^cannot read config file ${reEscape(missing)}: .*ENOENT`),
  );
  // A valid value at the bounds is accepted.
  const edge = loadConfig({
    argv: ['--config', file({ listener: { port: 65535 }, mqtt: { max_inflight: 1 } })],
  });
  assert.deepEqual([edge['listener.port'], edge['mqtt.max_inflight']], [65535, 1]);
});

test('CLI and programmatic options are validated the same way', () => {
  configError(
    () => loadConfig({ argv: ['--port', 'abc'] }),
    /^option 'listener\.port' must be a number, got "abc" \(from flag --port\)$/,
  );
  configError(
    () => loadConfig({ argv: ['--port', '1.5'] }),
    /^option 'listener\.port' must be an integer, got 1\.5 \(from flag --port\)$/,
  );
  configError(
    () => loadConfig({ argv: ['--nosuch', '1'] }),
    /^unknown option 'nosuch' \(from flag --nosuch\)$/,
  );
  configError(() => loadConfig({ argv: ['1883'] }), /^unexpected argument '1883'$/);
  configError(() => loadConfig({ argv: ['--shards'] }), /option 'node\.shards' must be a number, got "true"/);
  configError(
    () => loadConfig({ overrides: { 'listener.port': '1883x' } }),
    /option 'listener\.port' must be a number.*\(from options\)/,
  );
  configError(
    () => loadConfig({ overrides: { listener: { nosuch: 1 } } }),
    /^unknown option 'listener\.nosuch' \(from options\)$/,
  );
  // Fractions stay allowed where the schema allows them.
  assert.equal(
    loadConfig({ argv: ['--mqtt.keepalive_multiplier', '1.25'] })['mqtt.keepalive_multiplier'],
    1.25,
  );
});

test('usableCpus() honours the cgroup CPU quota: at least 1, at most os.availableParallelism()', () => {
  const n = usableCpus();
  assert.ok(Number.isInteger(n), `integer, got ${n}`);
  assert.ok(n >= 1 && n <= availableParallelism(), `1 <= ${n} <= ${availableParallelism()}`);
  // Where a cgroup v2 quota is visible, it is the ceiling of quota/period (capped by the CPUs).
  let quota: number | null = null;
  try {
    const [max, period] = readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/);
    if (max !== 'max') quota = Number(max) / Number(period);
  } catch {
    // no cgroup v2 CPU controller here
  }
  if (quota !== null) assert.equal(n, Math.max(1, Math.min(availableParallelism(), Math.ceil(quota))));
  // node.shards 0 means "as many as usable CPUs"; any other value is taken as is.
  assert.equal(shardCount(loadConfig()), n);
  assert.equal(shardCount(loadConfig({ overrides: { 'node.shards': 3 } })), 3);
});

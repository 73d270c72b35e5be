/**
 * The CLI as operators run it: `node dist/src/main.js ...` as a child process, its JSON log lines
 * on stdout, signals, exit codes, configuration from flags, environment and file. `npm test`
 * builds dist/ first; run `npm run build` before running this file on its own.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { MqttClient } from 'mqtt';
import { clientAt, closed, LineReader, TEST_HTTP_FLAGS, within } from './helpers/broker.js';

/** Per-test hang guard (a whole test on a loaded 2-core CI machine can take 15 s): a broker bug fails the test instead of hanging the run. */
const T = 60_000;
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = join(ROOT, 'dist/src/main.js');
const CRASH_PRELOAD = pathToFileURL(join(ROOT, 'test/fixtures/crash-shards.mjs')).href;

type Ctx = { after: (fn: () => void | Promise<void>) => void };

interface Cli {
  child: ChildProcess;
  out: LineReader;
  err: LineReader;
  /** Exit code and signal, once the process has exited and its stdout/stderr are closed */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function requireDist(): void {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: run \`npm run build\` first (npm test does)`);
}

/** Spawns the CLI; it is killed after the test if it is still running. */
function cli(t: Ctx, args: string[], opts: { env?: NodeJS.ProcessEnv; nodeArgs?: string[] } = {}): Cli {
  requireDist();
  // Only what the test sets: EMQX_* variables of the environment running the tests stay out.
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...opts.env };
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), MAIN, ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  return { child, out: new LineReader(child.stdout!), err: new LineReader(child.stderr!), done };
}

/** Waits for the CLI to exit (hang guard) and for all its output. */
function ended(c: Cli, timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return within(c.done, `process ${c.child.pid} to exit`, timeoutMs);
}

/** The fields of the first JSON log line with this msg. */
async function logLine(c: Cli, msg: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
  const line = await c.out.waitFor((l) => l.includes(`"msg":"${msg}"`), `log line "${msg}"`, timeoutMs);
  return JSON.parse(line) as Record<string, unknown>;
}

/** Waits for the n-th JSON log line with this msg. */
function nthLogLine(c: Cli, msg: string, n: number, timeoutMs = 20_000): Promise<string> {
  let seen = 0;
  return c.out.waitFor(
    (l) => l.includes(`"msg":"${msg}"`) && ++seen === n,
    `log line "${msg}" #${n}`,
    timeoutMs,
  );
}

function connectTo(t: Ctx, port: number, clientId: string): Promise<MqttClient> {
  return clientAt(t, `mqtt://127.0.0.1:${port}`, { protocolVersion: 4, clientId });
}

/** A QoS 1 round trip through the broker on one client. */
async function roundTrip(c: MqttClient, topic: string): Promise<void> {
  const got = new Promise<string>((resolve) => c.once('message', (_t, p) => resolve(p.toString())));
  await within(c.subscribeAsync(topic, { qos: 1 }), 'SUBACK');
  await within(c.publishAsync(topic, 'ping', { qos: 1 }), 'PUBACK');
  assert.equal(await within(got, `message on ${topic}`), 'ping');
}

/** The lowest port the kernel hands out for listen(0) and outgoing connections (Linux; else the IANA range). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 11_000) return low;
  } catch {}
  return 49_152;
}

/**
 * A TCP port that was free a moment ago, chosen below the ephemeral range: the other tests running
 * side by side listen on port 0 and connect from ephemeral ports, so none of them can take it
 * between this check and the CLI's listen (a port from listen(0) could be reused meanwhile).
 */
async function freePort(): Promise<number> {
  const low = ephemeralLow();
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000));
    const s = createServer();
    const free = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (free) {
      await new Promise<void>((resolve) => s.close(() => resolve()));
      return port;
    }
  }
}

const BASE = [
  '--port',
  '0',
  '--shards',
  '2',
  '--host',
  '127.0.0.1',
  '--log-level',
  'info',
  ...TEST_HTTP_FLAGS,
];

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal}: the CLI closes its clients and exits with code 0`, { timeout: T }, async (t) => {
    const c = cli(t, BASE);
    const listening = await logLine(c, 'listening');
    assert.equal(listening.host, '127.0.0.1');
    assert.equal(listening.shards, 2);
    const port = listening.port as number;
    assert.ok(Number.isInteger(port) && port > 0, `port in ${JSON.stringify(listening)}`);
    const a = await connectTo(t, port, `cli-${signal}-a`);
    const b = await connectTo(t, port, `cli-${signal}-b`);
    await roundTrip(a, `cli/${signal}`);
    const gone = [closed(a), closed(b)];

    c.child.kill(signal);
    assert.deepEqual(await ended(c), { code: 0, signal: null });
    await Promise.all(gone);
    await logLine(c, 'stopped', 1);
    assert.equal(c.err.text, '', 'nothing on stderr');
  });
}

test('an invalid option exits with code 2 and a clear message on stderr, without starting', {
  timeout: T,
}, async (t) => {
  const cases: [args: string[], message: RegExp][] = [
    [
      ['--port', 'abc'],
      /^emqx-ts: option 'listener\.port' must be a number, got "abc" \(from flag --port\)$/,
    ],
    [['--nosuch', '1'], /^emqx-ts: unknown option 'nosuch' \(from flag --nosuch\)$/],
    [['--port', '70000'], /^emqx-ts: option 'listener\.port' must be between 0 and 65535, got 70000/],
    [['--port', '1.5'], /^emqx-ts: option 'listener\.port' must be an integer, got 1\.5/],
    [['1883'], /^emqx-ts: unexpected argument '1883'$/],
  ];
  const runs = cases.map(([args]) => cli(t, args));
  for (const [i, run] of runs.entries()) {
    const [args, message] = cases[i];
    const { code } = await ended(run);
    assert.equal(code, 2, `${args.join(' ')}: exit code; stderr: ${run.err.text}`);
    assert.match(run.err.text.trim(), message, args.join(' '));
    assert.ok(!run.out.text.includes('"msg":"listening"'), `${args.join(' ')} did not start`);
  }
});

test('EMQX_ environment variables override the defaults (EMQX_LISTENER__PORT, EMQX_NODE__SHARDS)', {
  timeout: T,
}, async (t) => {
  const port = await freePort();
  const args = ['--host', '127.0.0.1', '--log-level', 'info', ...TEST_HTTP_FLAGS];
  const c = cli(t, args, { env: { EMQX_LISTENER__PORT: String(port), EMQX_NODE__SHARDS: '1' } });
  const listening = await logLine(c, 'listening');
  assert.equal(listening.port, port);
  assert.equal(listening.shards, 1);
  const client = await connectTo(t, port, 'cli-env');
  await roundTrip(client, 'cli/env');
  c.child.kill('SIGTERM');
  assert.equal((await ended(c)).code, 0);
});

test('--config file.json: options from a JSON file, flags above it; a bad file exits with code 2', {
  timeout: T,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'emqx.json');
  writeFileSync(
    file,
    JSON.stringify({
      listener: { host: '127.0.0.1', port: 0 },
      node: { shards: 1 },
      log: { level: 'info' },
    }),
  );
  // A file with an unknown key, and a missing file, both exit 2 (started meanwhile).
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ listener: { port: 1883, nosuch: true } }));
  const b = cli(t, ['--config', bad]);
  const missing = cli(t, ['--config', join(dir, 'missing.json')]);

  // The flag --shards 2 beats the file's node.shards 1; the rest comes from the file.
  const c = cli(t, ['--config', file, '--shards', '2', ...TEST_HTTP_FLAGS]);
  const listening = await logLine(c, 'listening');
  assert.equal(listening.host, '127.0.0.1');
  assert.equal(listening.shards, 2);
  const client = await connectTo(t, listening.port as number, 'cli-file');
  await roundTrip(client, 'cli/file');
  c.child.kill('SIGTERM');
  assert.equal((await ended(c)).code, 0);

  assert.equal((await ended(b)).code, 2);
  assert.match(
    b.err.text,
    new RegExp(`unknown option 'listener\\.nosuch' \\(from ${bad.replace(/[.]/g, '\\.')}\\)`),
  );

  assert.equal((await ended(missing)).code, 2);
  assert.match(missing.err.text, /cannot read config file .*missing\.json/);
});

test('past the shard restart intensity the CLI gives up and exits with code 1', { timeout: T }, async (t) => {
  // The preload makes the oldest live shard throw an uncaught exception on each SIGUSR2.
  const c = cli(t, [...BASE, '--node.shard_restart_intensity', '2'], {
    nodeArgs: ['--import', CRASH_PRELOAD],
  });
  const listening = await logLine(c, 'listening');
  const client = await connectTo(t, listening.port as number, 'cli-intensity');
  await roundTrip(client, 'cli/intensity');

  for (let i = 1; i <= 2; i++) {
    c.child.kill('SIGUSR2');
    await nthLogLine(c, 'shard exited; restarting', i);
    await nthLogLine(c, 'shard ready', 2 + i);
  }
  const gone = closed(client);
  c.child.kill('SIGUSR2');
  assert.deepEqual(await ended(c), { code: 1, signal: null });
  const fatal = await logLine(c, 'giving up', 1);
  assert.match(String(fatal.reason), /3 shard restarts within 60s/);
  // Whichever shard it was on, the client is disconnected when the broker stops.
  await gone;
});

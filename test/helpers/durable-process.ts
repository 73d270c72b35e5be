/**
 * A broker as a real process (`node dist/src/main.js`, 2 shards, its own data dir) for durable
 * tests that `kill -9` it; `npm test` builds dist/ first.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Ctx, HANG_GUARD_MS, LineReader } from './base.js';
import { TEST_HTTP_FLAGS } from './process.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = join(ROOT, 'dist/src/main.js');
/** The test flags without their memory-only default and shared data dir */
const FLAGS = TEST_HTTP_FLAGS.filter(
  (f) => !f.startsWith('--node.data_dir') && !f.startsWith('--durability.mode'),
);

export interface Proc {
  child: ChildProcess;
  out: LineReader;
  err: LineReader;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns the broker (killed with SIGKILL after the test if still running). */
export function spawnBroker(t: Ctx, dataDir: string, extra: string[] = []): Proc {
  const child = spawn(
    process.execPath,
    [
      MAIN,
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--shards',
      '2',
      ...FLAGS,
      `--node.data_dir=${dataDir}`,
      '--log-level',
      'info',
      ...extra,
    ],
    { cwd: ROOT, env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  return { child, out: new LineReader(child.stdout!), err: new LineReader(child.stderr!), done };
}

/** Starts a broker process; resolves with its MQTT and metrics ports (from its log lines). */
export async function startProcess(
  t: Ctx,
  dataDir: string,
  extra: string[] = [],
): Promise<{ p: Proc; port: number; metricsPort: number }> {
  const p = spawnBroker(t, dataDir, extra);
  const line = await p.out.waitFor((l) => l.includes('"msg":"listening"'), 'listening', HANG_GUARD_MS * 2);
  const http = await p.out.waitFor(
    (l) => l.includes('"msg":"metrics, health and REST API listening"'),
    'metrics listening',
    HANG_GUARD_MS * 2,
  );
  return {
    p,
    port: (JSON.parse(line) as { port: number }).port,
    metricsPort: (JSON.parse(http) as { metricsPort: number }).metricsPort,
  };
}

/** A counter of a broker process, summed over its threads (its Prometheus text). */
export async function scrapeCounter(metricsPort: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/api/v5/prometheus/stats`)).text();
  let sum = 0;
  for (const l of text.split('\n'))
    if (l.startsWith(name) && (l[name.length] === ' ' || l[name.length] === '{'))
      sum += Number(l.slice(l.lastIndexOf(' ') + 1));
  return sum;
}

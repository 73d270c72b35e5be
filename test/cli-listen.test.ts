/**
 * The CLI when its MQTT port is taken: a clear message and exit code 1, not a stack trace, and
 * no shard threads left running (the process ends by itself).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { LineReader, TEST_HTTP_FLAGS, within } from './helpers/broker.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = join(ROOT, 'dist/src/main.js');

test('MQTT port in use: exit code 1 with a clear message on stderr', async (t) => {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: run \`npm run build\` first (npm test does)`);
  const blocker = createServer();
  blocker.listen(0, '127.0.0.1');
  await once(blocker, 'listening');
  t.after(() => blocker.close());
  const port = (blocker.address() as { port: number }).port;
  const child = spawn(
    process.execPath,
    [MAIN, '--port', String(port), '--host', '127.0.0.1', '--shards', '1', ...TEST_HTTP_FLAGS],
    { cwd: ROOT, env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const err = new LineReader(child.stderr!);
  // 'close' (not 'exit'): stderr has been read to its end by then.
  const [code] = await within(once(child, 'close'), 'the CLI to exit', 30_000);
  assert.equal(code, 1);
  assert.ok(
    err.lines.some((l) => l.startsWith('emqx-ts: cannot listen on 127.0.0.1:') && l.includes('EADDRINUSE')),
    `stderr: ${err.lines.join('\n')}`,
  );
  assert.ok(!err.lines.some((l) => /^\s+at /.test(l)), 'no stack trace');
});

/**
 * The generated cluster protocol code (src/cluster/gen/, committed) must be what `buf generate`
 * makes of proto/ today: regenerate into a temporary directory (offline: buf and the local
 * protoc-gen-es plugin come from node_modules) and compare file by file.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function files(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else out.push(p);
  }
  return out.sort();
}

test('src/cluster/gen is in step with proto/ (npm run proto regenerates it)', (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'emqx-ts-proto-'));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  execFileSync(join(ROOT, 'node_modules/.bin/buf'), ['generate', '--output', tmp], {
    cwd: ROOT,
    stdio: 'pipe',
  });
  const committed = join(ROOT, 'src/cluster/gen');
  const fresh = join(tmp, 'src/cluster/gen');
  const a = files(committed).map((f) => relative(committed, f));
  const b = files(fresh).map((f) => relative(fresh, f));
  assert.deepEqual(a, b, 'same generated files; run `npm run proto` and commit');
  assert.ok(a.length > 0);
  for (const f of a) {
    assert.equal(
      readFileSync(join(committed, f), 'utf8'),
      readFileSync(join(fresh, f), 'utf8'),
      `${f} differs from proto/: run \`npm run proto\` and commit`,
    );
  }
});

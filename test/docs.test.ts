import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { renderConfigTable } from '../src/config/docs.js';

test('README options table matches the config schema', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const m = readme.match(/<!-- config-table:start -->\n([\s\S]*?)\n<!-- config-table:end -->/);
  assert.ok(m, 'README has the config-table markers');
  assert.equal(m[1], renderConfigTable(), 'run `npm run config:docs` and paste the table into README.md');
});

import { type OptionSpec, SCHEMA } from './schema.js';

/** The README's options table, generated from the schema (a test checks the README matches). */
export function renderConfigTable(): string {
  const rows = ['| option | environment | flag | default | meaning |', '| --- | --- | --- | --- | --- |'];
  for (const [key, spec] of Object.entries(SCHEMA) as [string, OptionSpec][]) {
    const env = `EMQX_${key.toUpperCase().split('.').join('__')}`;
    const flag = spec.flag ? `\`--${spec.flag}\`` : `\`--${key}\``;
    let doc = spec.doc;
    if (spec.choices) doc += ` (${spec.choices.join(', ')})`;
    const dflt = spec.default === '' ? '""' : String(spec.default);
    rows.push(`| \`${key}\` | \`${env}\` | ${flag} | \`${dflt}\` | ${doc} |`);
  }
  return rows.join('\n');
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop() ?? '')) {
  process.stdout.write(`${renderConfigTable()}\n`);
}

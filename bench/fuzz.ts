/**
 * The long fuzz run: `npm run fuzz -- --frames 1000000 [--seed N] [--connections 48] [--rate 0.08]`.
 * Prints the seed first (replay a failure with the same `--seed`), progress every 5 s, then
 * frames/s, shard restarts, RSS start/peak/end and the healthy client's round trips and latency.
 * Exits 1 on a crash, a shard restart, a stuck shard (healthy round trip timeout), an error-level
 * log line, or RSS growth beyond `--max-rss-growth-mib`. See docs/RELIABILITY.md.
 */
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULTS, fuzz, MAIN, report } from '../test/fuzz/harness.js';

const { values } = parseArgs({
  options: {
    frames: { type: 'string', default: '1000000' },
    seconds: { type: 'string', default: '0' },
    seed: { type: 'string' },
    connections: { type: 'string', default: String(DEFAULTS.connections) },
    rate: { type: 'string', default: String(DEFAULTS.rate) },
    'max-frames': { type: 'string', default: String(DEFAULTS.maxFrames) },
    shards: { type: 'string', default: String(DEFAULTS.shards) },
    'round-trip-timeout-ms': { type: 'string', default: String(DEFAULTS.roundTripTimeoutMs) },
    'max-rss-growth-mib': { type: 'string', default: '256' },
    'broker-arg': { type: 'string', multiple: true, default: [] },
  },
});

if (!existsSync(MAIN)) {
  console.error(`${MAIN} not found: run npm run build first`);
  process.exit(2);
}

const seed = values.seed !== undefined ? Number(values.seed) : randomInt(2 ** 31);
console.log(`fuzz seed ${seed} (replay: npm run fuzz -- --seed ${seed} --frames ${values.frames})`);
const r = await fuzz({
  seed,
  frames: Number(values.frames),
  seconds: Number(values.seconds),
  connections: Number(values.connections),
  rate: Number(values.rate),
  maxFrames: Number(values['max-frames']),
  shards: Number(values.shards),
  roundTripTimeoutMs: Number(values['round-trip-timeout-ms']),
  brokerArgs: values['broker-arg'],
  progress: (line) => console.log(line),
});
console.log(report(r));
const growth = (r.rss.end - r.rss.start) / 2 ** 20;
const bad =
  r.crash !== null ||
  r.restarts > 0 ||
  r.healthy.failures.length > 0 ||
  r.errorLines.size > 0 ||
  growth > Number(values['max-rss-growth-mib']);
console.log(bad ? 'FAIL' : 'OK');
process.exit(bad ? 1 : 0);

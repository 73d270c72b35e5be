/**
 * The long fuzz run: `npm run fuzz -- --frames 1000000 [--seed N] [--connections 48] [--rate 0.08]`.
 * Prints the seed first (replay a failure with the same `--seed`), progress every 5 s, then
 * frames/s, shard restarts, RSS start/peak/end and the healthy client's round trips and latency.
 * Exits 1 on a crash, a shard restart, a stuck shard (healthy round trip timeout), an error-level
 * log line, or RSS that grows in the second half of the run as much as in the first (64 MiB at
 * least). See docs/RELIABILITY.md.
 */
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULTS, fuzz, MAIN, report, rssHalves } from '../test/fuzz/harness.js';

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
    'broker-arg': { type: 'string', multiple: true, default: [] },
    'settle-seconds': { type: 'string', default: '10' },
    'broker-env': { type: 'string', multiple: true, default: [] },
    'node-arg': { type: 'string', multiple: true, default: [] },
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
  brokerEnv: Object.fromEntries(
    values['broker-env'].map((kv) => [kv.split('=')[0], kv.slice(kv.indexOf('=') + 1)]),
  ),
  nodeArgs: values['node-arg'],
  settleSeconds: Number(values['settle-seconds']),
  progress: (line) => console.log(line),
});
console.log(report(r));
// Bounded state fills in the first half of the run; a leak grows in the second as in the first.
const { first, second } = rssHalves(r);
const bad =
  r.crash !== null ||
  r.restarts > 0 ||
  r.healthy.failures.length > 0 ||
  r.errorLines.size > 0 ||
  second >= Math.max(64 * 2 ** 20, first);
console.log(bad ? 'FAIL' : 'OK');
process.exit(bad ? 1 : 0);

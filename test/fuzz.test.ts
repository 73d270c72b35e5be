/**
 * The short CI fuzz run (issue #9 item 11): ~20 s of mutated MQTT 3.1.1 / 5 packet streams over
 * 48 concurrent connections against the broker process (`dist/src/main.js`, built by
 * `npm test`), while a healthy mqtt.js pair keeps doing QoS 1 round trips through it. The long
 * run is `npm run fuzz -- --frames 1000000` (docs/RELIABILITY.md). The seed is printed; set
 * FUZZ_SEED to replay one.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { fuzz, MAIN, report, rssHalves } from './fuzz/harness.js';

const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const MIB = 2 ** 20;

test('20 s of mutated v3/v5 packet streams: no crash, no shard restart, no stuck shard, bounded RSS, healthy client served throughout', {
  timeout: 120_000,
}, async (t) => {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: run \`npm run build\` first (npm test does)`);
  t.diagnostic(`fuzz seed ${SEED} (replay: FUZZ_SEED=${SEED})`);
  const r = await fuzz({
    seed: SEED,
    seconds: 20,
    frames: 2_000_000,
    // Generous on a loaded 2-core CI machine; a stuck shard never answers at all.
    roundTripTimeoutMs: 15_000,
  });
  const text = report(r);
  for (const line of text.split('\n')) t.diagnostic(line);
  assert.equal(r.crash, null, text);
  assert.equal(r.restarts, 0, text);
  assert.deepEqual(r.healthy.failures, [], text);
  assert.deepEqual([...r.errorLines.keys()], [], text);
  assert.ok(r.frames > 10_000, `too few frames to mean anything: ${text}`);
  assert.ok(r.healthy.roundTrips > 20, text);
  // The broker really parsed what was sent (not all refused at CONNECT).
  assert.ok(r.brokerPackets > r.frames / 10, text);
  // Bounded: state the limits cap (sessions' queues, retained, heap) fills in the first half;
  // a leak keeps growing in the second half as in the first.
  const { first, second } = rssHalves(r);
  assert.ok(r.rss.peak < 1024 * MIB, `RSS peak over 1 GiB: ${text}`);
  assert.ok(second < Math.max(64 * MIB, first), `RSS kept growing: ${text}`);
});

const CRASH_PRELOAD = pathToFileURL(
  fileURLToPath(new URL('fixtures/crash-shards.mjs', import.meta.url)),
).href;

test('the fuzz harness sees a shard restart and the healthy client losing its shard (fault injected)', {
  timeout: 60_000,
}, async () => {
  // The same run with one shard made to crash (SIGUSR2 to the crash-shards preload): the
  // checks above would fail on it.
  const r = await fuzz({
    seed: 1,
    seconds: 4,
    frames: 2_000_000,
    connections: 8,
    nodeArgs: ['--import', CRASH_PRELOAD],
    onStart: (pid) => process.kill(pid, 'SIGUSR2'),
  });
  const text = report(r);
  assert.equal(r.crash, null, text);
  assert.ok(r.restarts >= 1, text);
  assert.ok(r.healthy.failures.length > 0, text);
});

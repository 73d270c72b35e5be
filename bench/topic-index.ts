/**
 * Topic-index micro-benchmark: match cost over 100k filters (5% '+', 3% '#', 10k distinct
 * 4-level topics) and subscribe+unsubscribe churn of unique filters. Prints figures; run with
 * `node --import tsx bench/topic-index.ts`. Single thread (no concurrent writer).
 */
import { MatchResult, TopicIndex } from '../src/routing/topic-index.js';

// Deterministic LCG, so runs compare.
let seed = 42;
const rnd = (n: number): number => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed >>> 8) % n;
};
const level = () => `l${rnd(40)}`;
const topics = Array.from({ length: 10_000 }, () => [level(), level(), level(), level()].join('/'));
const index = TopicIndex.create();
for (let i = 0; i < 100_000; i++) {
  const parts = topics[rnd(topics.length)]!.split('/');
  const r = rnd(100);
  if (r < 5) parts[rnd(4)] = '+';
  else if (r < 8) parts.splice(1 + rnd(3), 4, '#');
  else parts[3] = `${parts[3]}-${i}`; // mostly unique leaves
  if (index.acquire(parts.join('/'), i % 2) < 0) throw new Error('index full');
}
const encoded = topics.map((t) => Buffer.from(t));
const out = new MatchResult();
let hits = 0;
for (let round = 0; round < 3; round++) {
  const n = 500_000;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const b = encoded[i % encoded.length]!;
    hits += index.match(b, 0, b.length, out);
  }
  const ns = Number(process.hrtime.bigint() - t0) / n;
  console.log(`match: ${(ns / 1000).toFixed(2)} µs per match (${index.stats().nodes} nodes, round ${round})`);
}
const churn = TopicIndex.create();
for (let round = 0; round < 3; round++) {
  const n = 200_000;
  const refs = new Int32Array(1000);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i += 1000) {
    for (let k = 0; k < 1000; k++) refs[k] = churn.acquire(`churn/${round}-${i + k}/x${k}`, 0);
    for (let k = 0; k < 1000; k++) churn.clearShard(refs[k]!, 0);
  }
  const ns = Number(process.hrtime.bigint() - t0) / n;
  const s = churn.stats();
  console.log(
    `churn: ${(ns / 1000).toFixed(2)} µs per subscribe+unsubscribe; slab high-water ${s.nodesHighWater}, live ${s.nodes}`,
  );
}
if (hits === 0) console.log('no hits');

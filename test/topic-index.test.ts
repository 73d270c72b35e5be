import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { LastTopic } from '../src/routing/last-topic.js';
import { fnv1a32, MatchResult, TopicIndex, type TopicIndexShared } from '../src/routing/topic-index.js';

const WORKER = new URL('./fixtures/topic-index-worker.mjs', import.meta.url);

/** Naive MQTT matcher (§4.7), the reference the trie is checked against. */
function refMatches(filter: string, topic: string): boolean {
  return refMatchesLevels(filter.split('/'), topic.split('/'));
}

function refMatchesLevels(f: string[], t: string[]): boolean {
  const dollar = t[0]!.startsWith('$');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return !(i === 0 && dollar);
    if (i >= t.length) return false;
    if (f[i] === '+') {
      if (i === 0 && dollar) return false;
    } else if (f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

/** Filters matched by `topic`, asserting there are no duplicate node ids. */
function matchedFilters(index: TopicIndex, topic: string, out = new MatchResult()): string[] {
  const n = index.matchString(topic, out);
  assert.equal(n, out.count);
  const ids = Array.from(out.nodeIds.subarray(0, n));
  assert.equal(new Set(ids).size, ids.length, `duplicate node ids for ${JSON.stringify(topic)}`);
  return ids.map((id) => index.filterOf(id)).sort();
}

/** Deterministic xorshift32, so failures reproduce. */
function prng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

function subscribe(index: TopicIndex, filter: string, shard = 0): number {
  const id = index.ensure(filter);
  assert.ok(id > 0, `ensure(${filter}) refused`);
  index.setShard(id, shard);
  return id;
}

describe('TopicIndex wildcard semantics', () => {
  // [filter, topic, matches]
  const table: [string, string, boolean][] = [
    ['sport/tennis/player1', 'sport/tennis/player1', true],
    ['sport/tennis/player1', 'sport/tennis/player2', false],
    ['sport/tennis/player1', 'sport/tennis', false],
    ['sport/tennis/player1/#', 'sport/tennis/player1', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
    ['sport/#', 'sport', true],
    ['sport/#', 'sport/', true],
    ['sport/#', 'sports', false],
    ['#', 'sport/tennis/player1', true],
    ['#', '/', true],
    ['#', 'a', true],
    ['sport/tennis/+', 'sport/tennis/player1', true],
    ['sport/tennis/+', 'sport/tennis/player1/tournament', false],
    ['sport/tennis/+', 'sport/tennis/', true],
    ['sport/+', 'sport', false],
    ['sport/+', 'sport/', true],
    ['+/+', '/finance', true],
    ['/+', '/finance', true],
    ['+', '/finance', false],
    ['+', 'finance', true],
    ['+/#', 'a', true],
    ['+/#', 'a/b/c', true],
    ['+/tennis/#', 'sport/tennis', true],
    ['a//b', 'a//b', true],
    ['a/+/b', 'a//b', true],
    ['a//b', 'a/b', false],
    ['/a', '/a', true],
    ['/a', 'a', false],
    ['a/', 'a/', true],
    ['a/', 'a', false],
    ['+/+/+', 'a//', true],
    ['a/+/+', 'a/b', false],
    // [MQTT-4.7.2-1]: first-level wildcards do not match '$' topics.
    ['#', '$SYS/broker/uptime', false],
    ['+/broker/uptime', '$SYS/broker/uptime', false],
    ['+', '$SYS', false],
    ['$SYS/#', '$SYS/broker/uptime', true],
    ['$SYS/#', '$SYS', true],
    ['$SYS/+/uptime', '$SYS/broker/uptime', true],
    ['$SYS/broker/uptime', '$SYS/broker/uptime', true],
    ['a/$b/#', 'a/$b/c', true],
    ['+/$b', 'a/$b', true],
    ['a/#', 'a/$b', true],
    // Multi-byte UTF-8 levels are compared as bytes.
    ['häuser/+/温度', 'häuser/küche/温度', true],
    ['häuser/+/温度', 'hauser/küche/温度', false],
    ['😀/#', '😀/🚀/x', true],
    ['😀/+', '😁/x', false],
    ['+/é', 'x/é', true],
    ['+/é', 'x/e', false],
  ];

  const index = TopicIndex.create({ maxNodes: 4096, arenaBytes: 1 << 16 });
  for (const [i, [filter]] of table.entries()) subscribe(index, filter, i % 32);

  for (const [filter, topic, expected] of table) {
    it(`${JSON.stringify(filter)} ${expected ? 'matches' : 'does not match'} ${JSON.stringify(topic)}`, () => {
      assert.equal(refMatches(filter, topic), expected, 'reference matcher disagrees with the table');
      assert.equal(matchedFilters(index, topic).includes(filter), expected);
    });
  }

  it('matches exactly what the reference matcher says for every table topic', () => {
    const filters = [...new Set(table.map(([f]) => f))];
    for (const [, topic] of table) {
      const expected = filters.filter((f) => refMatches(f, topic)).sort();
      assert.deepEqual(matchedFilters(index, topic), expected, topic);
    }
  });

  it('matches a zero-copy subarray given by start/end offsets', () => {
    const filters = [...new Set(table.map(([f]) => f))];
    const frame = Buffer.from('\x30\x00$SYS/broker/uptime|sport/tennis/player1|trailing');
    const out = new MatchResult();
    let start = 2;
    for (const topic of ['$SYS/broker/uptime', 'sport/tennis/player1']) {
      const end = start + Buffer.byteLength(topic);
      index.match(frame, start, end, out);
      const actual = Array.from(out.nodeIds.subarray(0, out.count), (id) => index.filterOf(id)).sort();
      assert.deepEqual(actual, filters.filter((f) => refMatches(f, topic)).sort());
      start = end + 1;
    }
    index.match(frame, 2, 2 + '$SYS/broker/uptime'.length, out);
    assert.equal(out.count, 3, '$SYS/#, $SYS/+/uptime, $SYS/broker/uptime and no first-level wildcard');
  });

  it('ignores nodes whose mask is 0 and reports the OR of masks', () => {
    const idx = TopicIndex.create({ maxNodes: 64, arenaBytes: 1024 });
    const a = subscribe(idx, 'a/+', 3);
    subscribe(idx, 'a/#', 31);
    idx.ensure('a/b'); // exists but nobody subscribed
    const out = new MatchResult();
    idx.matchString('a/b', out);
    assert.equal(out.count, 2);
    assert.equal(out.mask, ((1 << 3) | (1 << 31)) >>> 0);
    idx.clearShard(a, 3);
    idx.matchString('a/b', out);
    assert.deepEqual(Array.from(out.nodeIds.subarray(0, out.count)), [idx.find('a/#')]);
    assert.equal(out.mask, 2 ** 31);
  });

  it('grows MatchResult when more nodes match than it holds', () => {
    const idx = TopicIndex.create({ maxNodes: 256, arenaBytes: 1024 });
    const filters = ['#', 'a/#', 'a/+', 'a/b', '+/b', '+/+', '+/#', 'a/b/#', '+/b/#'];
    for (const [i, f] of filters.entries()) subscribe(idx, f, i);
    const out = new MatchResult(1);
    assert.deepEqual(matchedFilters(idx, 'a/b', out), [...filters].sort());
    assert.ok(out.nodeIds.length >= filters.length);
  });

  it('handles topics deeper than the initial match stack', () => {
    const idx = TopicIndex.create({ maxNodes: 4096, arenaBytes: 1 << 14 });
    const deep = Array.from({ length: 500 }, (_, i) => `l${i % 3}`);
    subscribe(idx, deep.join('/'), 1);
    subscribe(idx, deep.map((l, i) => (i % 2 ? '+' : l)).join('/'), 2);
    subscribe(idx, `${deep.slice(0, 250).join('/')}/#`, 3);
    assert.equal(matchedFilters(idx, deep.join('/')).length, 3);
  });
});

describe('TopicIndex randomized differential test', () => {
  it('agrees with the naive matcher on thousands of random filters and topics', () => {
    const rnd = prng(0xc0ffee);
    const levels = ['a', 'b', 'c', '', 'é', '$s', 'long-level-name'];
    const randomFilter = (): string => {
      const depth = 1 + rnd(5);
      const parts: string[] = [];
      for (let d = 0; d < depth; d++) {
        const r = rnd(10);
        parts.push(r < 2 ? '+' : levels[rnd(levels.length)]!);
      }
      if (rnd(5) === 0) parts.push('#');
      return parts.join('/');
    };
    const randomTopic = (): string => {
      const depth = 1 + rnd(6);
      return Array.from({ length: depth }, () => levels[rnd(levels.length)]!).join('/');
    };

    const index = TopicIndex.create({ maxNodes: 1 << 16, arenaBytes: 1 << 18 });
    // Reference: per-filter refcounts per shard, like a shard would keep them.
    const refCounts = new Map<string, number[]>();
    const maskOfRef = (f: string): number =>
      (refCounts.get(f) ?? []).reduce((m, c, s) => (c > 0 ? m | (1 << s) : m), 0) >>> 0;

    for (let i = 0; i < 6000; i++) {
      const filter = randomFilter();
      const shard = rnd(32);
      const counts = refCounts.get(filter) ?? new Array<number>(32).fill(0);
      refCounts.set(filter, counts);
      const id = index.ensure(filter);
      assert.ok(id > 0);
      // Every 4th operation is an unsubscribe of an existing subscription.
      if (rnd(4) === 0 && counts[shard]! > 0) {
        if (--counts[shard]! === 0) index.clearShard(id, shard);
      } else if (counts[shard]!++ === 0) index.setShard(id, shard);
    }

    const active = [...refCounts.keys()].filter((f) => maskOfRef(f) !== 0);
    const activeLevels = active.map((f) => f.split('/'));
    assert.equal(index.stats().activeFilters, active.length);
    // A filter nobody subscribes to any more has been removed (find: -1).
    for (const f of refCounts.keys()) {
      const ref = index.find(f);
      assert.equal(ref < 0 ? 0 : index.maskOf(ref), maskOfRef(f), f);
    }

    const out = new MatchResult(2);
    let mismatches = 0;
    let totalMatches = 0;
    for (let i = 0; i < 4000; i++) {
      const topic = randomTopic();
      const topicLevels = topic.split('/');
      const expected = active.filter((_, j) => refMatchesLevels(activeLevels[j]!, topicLevels)).sort();
      const expectedMask = expected.reduce((m, f) => m | maskOfRef(f), 0) >>> 0;
      const actual = matchedFilters(index, topic, out);
      totalMatches += actual.length;
      if (JSON.stringify(actual) !== JSON.stringify(expected) || out.mask !== expectedMask) {
        if (mismatches++ < 5)
          assert.deepEqual({ topic, actual, mask: out.mask }, { topic, expected, expectedMask });
      }
    }
    assert.equal(mismatches, 0);
    assert.ok(totalMatches > 4000, `too few matches (${totalMatches}) to be a meaningful test`);
  });
});

describe('TopicIndex hash table', () => {
  it('keeps FNV-1a colliding levels apart (different and equal lengths)', () => {
    const h = (s: string) => fnv1a32(Buffer.from(s), 0, Buffer.byteLength(s));
    const pairs: [string, string][] = [
      ['costarring', 'liquid'],
      ['declinate', 'macallums'],
      ['altarage', 'zinke'],
      // Equal length, so the byte comparison decides (found by a birthday search over k + base36).
      ['k0062vu', 'k00duea'],
    ];
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 1024 });
    for (const [x, y] of pairs) {
      assert.equal(h(x), h(y), `${x} and ${y} should collide`);
      for (const parent of ['p', 'q/r']) {
        const fx = `${parent}/${x}`;
        const fy = `${parent}/${y}`;
        const ix = subscribe(index, fx, 1);
        assert.equal(index.find(fy), -1, `${fy} must not alias ${fx}`);
        const iy = subscribe(index, fy, 2);
        assert.notEqual(ix, iy);
        assert.equal(index.find(fx), ix);
        assert.equal(index.find(fy), iy);
        assert.equal(index.filterOf(ix), fx);
        assert.equal(index.filterOf(iy), fy);
        assert.deepEqual(matchedFilters(index, fx), [fx]);
        assert.deepEqual(matchedFilters(index, fy), [fy]);
      }
    }
  });

  it('stays correct with many children under one parent (long probe chains)', () => {
    const maxNodes = 4096; // 8192 slots: the table ends up at its maximum load, 50%
    const index = TopicIndex.create({ maxNodes, arenaBytes: 1 << 16 });
    const ids: number[] = [];
    for (let i = 0; i < maxNodes - 2; i++) ids.push(subscribe(index, `p/${i}`, i % 32));
    assert.equal(index.stats().nodes, maxNodes);
    for (let i = 0; i < ids.length; i++) {
      assert.equal(index.find(`p/${i}`), ids[i]);
      assert.equal(index.filterOf(ids[i]!), `p/${i}`);
      assert.deepEqual(matchedFilters(index, `p/${i}`), [`p/${i}`]);
    }
    assert.equal(index.find('p/x'), -1);
    assert.equal(index.find(`p/${maxNodes}`), -1);
    assert.deepEqual(matchedFilters(index, 'p/x'), []);
  });
});

describe('TopicIndex capacity', () => {
  it('returns -1 when out of nodes, creating nothing and corrupting nothing', () => {
    const index = TopicIndex.create({ maxNodes: 8, arenaBytes: 1024 });
    const abc = subscribe(index, 'a/b/c', 5); // 3 nodes + root
    const ab = index.find('a/b');
    const before = index.stats();
    assert.equal(before.nodes, 4);
    assert.equal(index.ensure('x/y/z/w/v'), -1); // needs 5, 4 free: refused as a whole
    assert.deepEqual(index.stats(), before);
    assert.equal(index.find('x'), -1);
    const plusHash = subscribe(index, 'a/b/+/#', 6); // fill the 4 free nodes exactly
    assert.equal(index.filterOf(plusHash), 'a/b/+/#');
    assert.ok(subscribe(index, 'a/d', 7) > 0);
    assert.ok(subscribe(index, '#', 8) > 0);
    assert.equal(index.stats().nodes, 8);
    assert.equal(index.ensure('z'), -1);
    assert.equal(index.ensure('a/+'), -1);
    assert.equal(index.ensure('a/b/c'), abc, 'existing filters are still returned when full');
    assert.equal(index.find('a/b'), ab);
    assert.equal(index.filterOf(abc), 'a/b/c');
    assert.equal(index.maskOf(abc), 1 << 5);
    assert.deepEqual(matchedFilters(index, 'a/b/c'), ['#', 'a/b/+/#', 'a/b/c']);
  });

  it('returns -1 when the arena is full; wildcard levels need no arena bytes', () => {
    // Two 8-byte blocks: levels of up to 8 bytes take one each (buddy allocator, arena.ts).
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 16 });
    const id = subscribe(index, 'abcd/efgh', 0);
    assert.equal(index.stats().arenaBytes, 16);
    assert.equal(index.ensure('abcd/xyz'), -1);
    assert.ok(subscribe(index, 'abcd/+/#', 1) > 0);
    assert.equal(index.ensure('k'), -1);
    assert.equal(index.filterOf(id), 'abcd/efgh');
    assert.deepEqual(matchedFilters(index, 'abcd/efgh'), ['abcd/+/#', 'abcd/efgh']);
    // Unsubscribing gives the block back ('abcd' stays: 'abcd/+/#' still needs it).
    index.clearShard(id, 0);
    index.reclaim();
    assert.equal(index.stats().arenaBytes, 8);
    assert.ok(subscribe(index, 'abcd/ij', 2) > 0);
    assert.deepEqual(matchedFilters(index, 'abcd/efgh'), ['abcd/+/#']);
  });

  it('rejects bad options, node ids and shards', () => {
    assert.throws(() => TopicIndex.create({ maxNodes: 1 }), RangeError);
    assert.throws(() => TopicIndex.create({ arenaBytes: -1 }), RangeError);
    const index = TopicIndex.create({ maxNodes: 16, arenaBytes: 64 });
    const id = index.ensure('a');
    assert.throws(() => index.setShard(id, 32), RangeError);
    assert.throws(() => index.setShard(0, 1), RangeError);
    assert.throws(() => index.maskOf(id + 1), RangeError);
    assert.throws(() => index.filterOf(-1), RangeError);
  });
});

describe('TopicIndex bookkeeping', () => {
  it('round-trips filterOf and finds without creating', () => {
    const index = TopicIndex.create({ maxNodes: 1024, arenaBytes: 4096 });
    const filters = [
      'a',
      '/',
      '//',
      'a/',
      '/a',
      '+',
      '#',
      '+/+/#',
      '$SYS/#',
      'häuser/+/温度',
      '😀',
      'a/b/c/d/e/f',
    ];
    const ids = filters.map((f) => index.ensure(f));
    assert.equal(new Set(ids).size, filters.length);
    filters.forEach((f, i) => {
      assert.equal(index.filterOf(ids[i]!), f);
      assert.equal(index.find(f), ids[i]);
      assert.equal(index.ensure(f), ids[i], 'ensure is idempotent');
    });
    const nodes = index.stats().nodes;
    assert.equal(index.find('a/b/c/x'), -1);
    assert.equal(index.find('a/b/+'), -1);
    assert.equal(index.find('nope'), -1);
    assert.equal(index.stats().nodes, nodes, 'find creates nothing');
    assert.ok(index.find('a/b') > 0, 'intermediate nodes exist');
    assert.equal(index.filterOf(0), '');
  });

  it('clearShardEverywhere clears one shard bit on every node and keeps activeFilters exact', () => {
    const index = TopicIndex.create({ maxNodes: 1024, arenaBytes: 4096 });
    const only3 = ['a', 'a/b', 'x/+', '#'].map((f) => subscribe(index, f, 3));
    const both = ['c/d', 'c/#'].map((f) => {
      const id = subscribe(index, f, 3);
      index.setShard(id, 31);
      return id;
    });
    const only31 = subscribe(index, 'e', 31);
    assert.equal(index.stats().activeFilters, 7);
    index.clearShardEverywhere(3);
    for (const id of only3) assert.equal(index.maskOf(id), 0);
    for (const id of both) assert.equal(index.maskOf(id), 2 ** 31);
    assert.equal(index.maskOf(only31), 2 ** 31);
    assert.equal(index.stats().activeFilters, 3);
    assert.deepEqual(matchedFilters(index, 'a/b'), []);
    assert.deepEqual(matchedFilters(index, 'c/d'), ['c/#', 'c/d']);
    index.clearShardEverywhere(31);
    assert.equal(index.stats().activeFilters, 0);
    assert.equal(index.stats().nodes, 1, 'nodes left without subscribers are removed');
    assert.equal(index.setShard(only31, 1), false, 'a stale reference is refused');
    // Setting an already-set bit or clearing a clear one does not skew the count.
    const again = subscribe(index, 'e', 1);
    assert.notEqual(again, only31, 'a reused node has a new generation');
    index.setShard(again, 1);
    index.clearShard(again, 2);
    assert.equal(index.stats().activeFilters, 1);
  });

  it('attached views share nodes, masks and counters', () => {
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 256 });
    const view = TopicIndex.attach(index.shared);
    const id = view.ensure('a/+');
    view.setShard(id, 4);
    assert.equal(index.find('a/+'), id);
    assert.equal(index.maskOf(id), 1 << 4);
    assert.deepEqual(index.stats(), view.stats());
    assert.throws(() => TopicIndex.attach({ ...index.shared, control: new SharedArrayBuffer(64) }));
  });

  it('every write that changes a mask moves the change count (match caches key on it)', () => {
    // The shard's cluster link caches the last topic's peer mask while changes() stays put
    // (src/cluster/shard-link.ts): a mask change that did not move the count would leave a
    // stale route in use (a message forwarded to a peer that no longer subscribes, or not to
    // one that does).
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 256 });
    const view = TopicIndex.attach(index.shared);
    const out = new MatchResult();
    const ref = subscribe(index, 'a/+', 1);
    let seen = view.changes();
    const moved = (what: string) => {
      const now = view.changes();
      assert.notEqual(now, seen, `${what} must move the change count`);
      seen = now;
    };
    index.setShard(ref, 2);
    moved('setShard');
    view.matchString('a/b', out);
    assert.equal(out.mask, 0b110);
    // Clearing one of two bits removes no node: the mask changes all the same.
    index.clearShard(ref, 1);
    moved('clearShard of a bit another shard still holds');
    view.matchString('a/b', out);
    assert.equal(out.mask, 0b100);
    index.clearShard(ref, 2);
    moved('clearShard of the last bit');
    assert.equal(view.matchString('a/b', out), 0);
    // Clearing a bit nobody holds changes nothing (and need not move the count).
    const other = subscribe(index, 'c', 3);
    seen = view.changes();
    index.clearShard(other, 4);
    assert.equal(index.maskOf(other), 1 << 3);
    index.acquire('d/#', 5);
    moved('acquire');
    index.clearShardEverywhere(5);
    moved('clearShardEverywhere');
  });

  it('LastTopic reuses a match only for the same bytes under the same change count', () => {
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 256 });
    const ref = subscribe(index, 'a/+', 1);
    const last = new LastTopic();
    const t = Buffer.from('a/b');
    assert.equal(last.hit(t, index.changes()), false, 'nothing stored yet');
    last.store(t, index.changes());
    assert.equal(last.hit(Buffer.from('a/b'), index.changes()), true);
    assert.equal(last.hit(Buffer.from('a/c'), index.changes()), false, 'other bytes');
    assert.equal(last.hit(Buffer.from('a/bc'), index.changes()), false, 'other length');
    index.setShard(ref, 2);
    assert.equal(last.hit(t, index.changes()), false, 'a write to the index invalidates it');
    const long = Buffer.alloc(300, 0x61);
    last.store(long, index.changes());
    assert.equal(last.hit(long, index.changes()), false, 'a long topic is not cached');
  });
});

interface WriterResult {
  sharedIds: number[];
}
interface ReaderResult {
  errors: string[];
  checks: number;
  checksWhileWriting: number;
  stats: ReturnType<TopicIndex['stats']>;
}

function startWorker(workerData: Record<string, unknown>): Worker {
  return new Worker(WORKER, { workerData });
}

/** Next message from a worker; rejects on worker error or early exit. */
function nextMessage<T>(worker: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    const onMessage = (msg: T) => {
      cleanup();
      resolve(msg);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new Error(`worker exited with code ${code} before replying`));
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
}

describe('TopicIndex across threads', () => {
  it('a reader worker never sees half-built state while two threads insert', {
    timeout: 180_000,
  }, async (t) => {
    const count = 6000;
    // Shapes exercise literal, '+', '#', multi-byte and empty levels, and crowd one parent per writer.
    const shapes = [
      { filter: 'c/w{w}/{k}', topic: 'c/w{w}/{k}' },
      { filter: 'c/w{w}/+/{k}', topic: 'c/w{w}/x/{k}' },
      { filter: 'c/w{w}/{k}/#', topic: 'c/w{w}/{k}/y/z' },
      { filter: '+/w{w}/é{k}/+', topic: 'c/w{w}/é{k}/' },
    ];
    const sharedFilter = 'shared/{k}'; // both writers ensure these: same ids expected
    const index = TopicIndex.create({ maxNodes: 1 << 16, arenaBytes: 1 << 20 });
    const progress = new SharedArrayBuffer(8);
    const go = new SharedArrayBuffer(4);
    const writers = [{ count }, { count }];
    const shared: TopicIndexShared = index.shared;

    const reader = startWorker({
      role: 'reader',
      shared,
      writers,
      shapes,
      progress,
      maxIterations: 200_000,
      seed: 7,
    });
    const writer = startWorker({
      role: 'writer',
      shared,
      writer: 1,
      count,
      shapes,
      sharedFilter,
      progress,
      go,
    });
    await nextMessage(reader); // attached and about to loop: make the writes overlap its reads
    const readerDone = nextMessage<ReaderResult>(reader);
    const writerDone = nextMessage<WriterResult>(writer);
    try {
      const goView = new Int32Array(go);
      Atomics.store(goView, 0, 1);
      Atomics.notify(goView, 0);

      // Main thread is writer 0 (same steps as the fixture's writer).
      const progressView = new Int32Array(progress);
      const fill = (t: string, k: number) => t.replaceAll('{w}', '0').replaceAll('{k}', String(k));
      const mainSharedIds: number[] = [];
      for (let k = 0; k < count; k++) {
        const id = index.ensure(fill(shapes[k % shapes.length]!.filter, k));
        assert.ok(id > 0);
        index.setShard(id, k % 32);
        Atomics.store(progressView, 0, k + 1);
        Atomics.notify(progressView, 0);
        mainSharedIds.push(index.ensure(fill(sharedFilter, k)));
        if (k % 1000 === 999) await new Promise((r) => setImmediate(r)); // let worker errors surface
      }

      const [{ sharedIds }, result] = await Promise.all([writerDone, readerDone]);
      assert.deepEqual(result.errors, []);
      t.diagnostic(`reader: ${result.checks} checks, ${result.checksWhileWriting} rounds while writers ran`);
      assert.ok(result.checks >= 2 * count, `reader checked only ${result.checks}`);
      assert.deepEqual(sharedIds, mainSharedIds, 'both writers got the same ids for the same filters');
      for (let k = 0; k < count; k += 97) assert.equal(index.filterOf(sharedIds[k]!), `shared/${k}`);

      // The concurrent build has exactly the nodes a single-threaded build of the same filters has.
      const serial = TopicIndex.create({ maxNodes: 1 << 16, arenaBytes: 1 << 20 });
      for (let w = 0; w < 2; w++) {
        for (let k = 0; k < count; k++) {
          const t = shapes[k % shapes.length]!.filter.replaceAll('{w}', String(w)).replaceAll(
            '{k}',
            String(k),
          );
          serial.setShard(serial.ensure(t), k % 32);
          serial.ensure(`shared/${k}`);
        }
      }
      assert.deepEqual(index.stats(), serial.stats());
      assert.deepEqual(result.stats, serial.stats(), 'reader agreed on the counters at the end');
    } finally {
      await Promise.all([reader.terminate(), writer.terminate()]);
    }
  });

  it('releaseLockHeldBy frees the writer lock of a dead thread and wakes a blocked writer', async () => {
    const index = TopicIndex.create({ maxNodes: 64, arenaBytes: 256 });
    const deadThreadId = 987654;
    // Simulate a thread that died inside ensure(): lock word (control[2]) = its threadId + 1.
    const control = new Int32Array(index.shared.control);
    assert.equal(Atomics.compareExchange(control, 2, 0, deadThreadId + 1), 0);
    const worker = startWorker({ role: 'ensure-one', shared: index.shared, filter: 'after/crash' });
    try {
      assert.deepEqual(await nextMessage(worker), { waiting: true });
      const reply = nextMessage<{ id: number }>(worker);
      assert.equal(index.releaseLockHeldBy(deadThreadId + 1), false, 'only the holder is released');
      assert.equal(index.releaseLockHeldBy(deadThreadId), true);
      const { id } = await reply;
      assert.equal(index.filterOf(id), 'after/crash');
      assert.equal(index.releaseLockHeldBy(deadThreadId), false);
      assert.equal(index.ensure('main/too') > 0, true, 'lock is usable again');
    } finally {
      await worker.terminate();
    }
  });
});

describe('TopicIndex reclamation across threads', () => {
  it('readers keep matching exactly while another thread removes and reuses nodes', {
    timeout: 120_000,
  }, async () => {
    const index = TopicIndex.create({ maxNodes: 1 << 16, arenaBytes: 1 << 20 });
    // Stable filters: never removed, so every match of their topics must find exactly them.
    const stable = Array.from({ length: 300 }, (_, i) => `s/${i}`);
    const refs = stable.map((f, i) => {
      const ref = index.acquire(f, i % 32);
      assert.ok(ref > 0);
      return ref;
    });
    const wild = index.acquire('w/+/+/x', 5); // matches no transient topic we check
    const stop = new SharedArrayBuffer(4);
    const churner = startWorker({ role: 'churner', shared: index.shared, stop, rounds: 4000, width: 300 });
    const done = nextMessage<{ ops: number }>(churner);
    const out = new MatchResult(2);
    const errors: string[] = [];
    let checks = 0;
    let finished = false;
    void done.then(() => {
      finished = true;
    });
    const deadline = Date.now() + 60_000;
    while (!finished && Date.now() < deadline && errors.length < 10) {
      for (let i = 0; i < stable.length; i++) {
        index.matchString(`s/${i}`, out);
        if (out.count !== 1 || out.nodeIds[0] !== refs[i])
          errors.push(`s/${i}: ${out.count} matches [${Array.from(out.nodeIds.subarray(0, out.count))}]`);
        checks++;
      }
      // A topic under the transient subtrees: only the stable wildcard may match it.
      index.matchString('w/q/q/x', out);
      if (out.count !== 1 || out.nodeIds[0] !== wild) errors.push(`w/q/q/x: ${out.count} matches`);
      await new Promise((r) => setImmediate(r)); // lets the worker's reply arrive
    }
    Atomics.store(new Int32Array(stop), 0, 1);
    const { ops } = await done;
    assert.deepEqual(errors, []);
    assert.ok(checks > 10_000, `only ${checks} checks`);
    // ~5/3 nodes per filter: far more nodes went through the index than it can hold at once,
    // so none of it works without reuse (the churner throws on a refusal).
    assert.ok(ops > 4 * 65536, `churner did only ${ops} operations`);
    // Everything transient is gone again. (How far the slab grew depends on how long the OS
    // paused this reader inside a walk: retired nodes wait for it.)
    index.reclaim();
    const after = index.stats();
    assert.equal(after.nodes, 1 + 1 + stable.length + 4, 'root, s, stable filters, w/+/+/x');
    assert.equal(after.retiredNodes, 0);
  });
});

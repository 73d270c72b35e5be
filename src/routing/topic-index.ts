/**
 * Shared-memory topic-filter trie.
 *
 * Every shard worker attaches to the same SharedArrayBuffers and matches PUBLISH topics lock-free;
 * writers (subscribe/unsubscribe in any thread) serialise on an Atomics lock in the control block.
 * This file is the reader side and the API; index-writer.ts has the writes, index-layout.ts the
 * shared layout, arena.ts the level-text allocator.
 *
 * Layout:
 * - control: Int32Array of counters, free-list heads, the writer lock and the reader slots.
 * - nodes: Int32Array slab, NODE_STRIDE ints per node. Node 0 is the root. `+` and `#` children
 *   live in the node's PLUS/HASH fields; id 0 doubles as "none" because the root is never a child.
 * - slots: open-addressing (linear probing) table of literal children, [childId, key] per slot,
 *   keyed by (parentId, FNV-1a of the level bytes). At most maxNodes entries in >= 2*maxNodes
 *   slots, so probes stay short and always reach an empty slot. Deletion shifts entries back
 *   (no tombstones), so the table never silts up under churn.
 * - arena: UTF-8 bytes of literal levels in buddy-allocated blocks (arena.ts); arenaMeta is the
 *   allocator's per-8-byte free map.
 *
 * References: what `acquire`/`match` hand out is a node *reference*, `gen << idBits | id`. A node
 * freed and reused gets a new generation, so a reference that outlives its node (a cross-shard
 * batch in flight, a stale table entry) never finds the new filter's subscribers.
 *
 * Reclamation: a node whose mask drops to 0 and that has no children is unlinked under the lock
 * and retired (limbo list, tagged with the current epoch); it and its arena block are reused only
 * after every reader that could still hold it has left its read section (epoch-based
 * reclamation). Readers announce the epoch in their own slot when a walk starts and clear it at
 * the end. The safety argument (JS Atomics are sequentially consistent, so all Atomics ops are
 * in one total order S):
 *   1. Publication: a node's fields and bytes are written before the pointer to it is
 *      Atomics.store'd; a reader loads pointers with Atomics.load, so a reader that reaches a node
 *      sees it complete (the reused case too: rewritten before re-published).
 *   2. A reader that reaches a retired node X loaded the pointer to X before the writer's unlink
 *      in S. It stored its announced epoch r before that load, having read r before that. The
 *      writer read the tag t after the unlink. Epochs only grow, so r <= t.
 *   3. `reclaim` first increments the epoch, then frees X only if every reader slot reads 0 or an
 *      epoch > t. A slot with r <= t blocks X. A slot read as 0 is a reader that is out of its
 *      section (done with X) or whose announcement comes after our read in S, hence after the
 *      unlink: it cannot reach X. So no reader ever reads a recycled X.
 *   4. Slot-table deletion moves entries, which could make a concurrent probe miss a live key:
 *      the writer makes the shift counter odd around every deletion, and a probe that ends on an
 *      empty slot retries if the counter was odd or changed; after a few retries it asks
 *      writers to pause (C_READERS_WAITING), so a reader cannot starve and hold back
 *      reclamation. Hits need no check (node parent, length and bytes are compared and, by
 *      3, intact).
 *   5. Setting a bit takes the lock (acquire/setShard), and removal re-checks mask == 0 and no
 *      children under the lock, so a node cannot be removed between a lookup and a bit set.
 * A writer that dies mid-operation leaves only complete published nodes and unpublished ones,
 * so `releaseLockHeldBy` can recover the lock (and the dead thread's reader slot).
 *
 * Memory: SAB pages are committed lazily by the OS; the default reservation (40 MiB nodes +
 * 16 MiB slots + 32 MiB arena + 4 MiB arena map, virtual) costs no RSS until used. Free nodes are
 * reused before the slab grows, so the touched part of the slab stays at the live high-water
 * mark. Capacity is fixed at create time; when exhausted `acquire` returns -1.
 *
 * Micro-benchmark (before reclamation was added; same machine, 100k filters with 5% '+' and 3%
 * '#', 10k distinct 4-level topics): 2.5-4 µs per match, about half a Map-based trie's.
 */
import { Buffer } from 'node:buffer';
import { threadId } from 'node:worker_threads';
import { BuddyArena } from './arena.js';
import {
  C_ACTIVE,
  C_ARENA,
  C_ARENA_BYTES,
  C_CHANGES,
  C_EPOCH,
  C_FREE_HEAD,
  C_ID_BITS,
  C_LIMBO_COUNT,
  C_LIMBO_HEAD,
  C_LIMBO_TAIL,
  C_LIVE,
  C_LOCK,
  C_MAGIC,
  C_MAX_NODES,
  C_NODE_COUNT,
  C_READERS,
  C_READERS_WAITING,
  C_SHIFT_SEQ,
  C_SLOT_COUNT,
  C_VERSION,
  CONTROL_INTS,
  F_GEN,
  F_HASH,
  F_LEN,
  F_MASK,
  F_OFF,
  F_PARENT,
  F_PLUS,
  F_STATE,
  LAYOUT_VERSION,
  LEN_HASH,
  LEN_PLUS,
  LEN_ROOT,
  MAGIC,
  NODE_STRIDE,
  OPTIMISTIC_PROBES,
  READER_SLOTS,
  RECLAIM_BATCH,
} from './index-layout.js';
import {
  DOLLAR,
  FNV_OFFSET,
  FNV_PRIME,
  fnv1a32,
  HASH,
  levelEnd,
  MatchResult,
  nextPow2,
  PLUS,
  SLASH,
  slotIndex,
  slotKey,
} from './index-util.js';
import { IndexWriter } from './index-writer.js';

const keepNone = (): boolean => false;

/** Atomics.waitAsync (Node ≥ 16; in TypeScript's lib only from es2024 on) */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

export { fnv1a32, MatchResult };

/** Plain data (SharedArrayBuffers only), postMessage-able; capacities are read from `control`. */
export interface TopicIndexShared {
  readonly control: SharedArrayBuffer;
  readonly nodes: SharedArrayBuffer;
  readonly slots: SharedArrayBuffer;
  readonly arena: SharedArrayBuffer;
  readonly arenaMeta: SharedArrayBuffer;
}

export interface TopicIndexOptions {
  /** Node capacity including the root. Default 1 << 20. */
  maxNodes?: number;
  /** Bytes for literal level text (whole 8-byte units are used). Default 32 MiB. */
  arenaBytes?: number;
}

export interface TopicIndexStats {
  /** Live nodes, root included */
  nodes: number;
  /** Bytes in allocated arena blocks (live and retired nodes) */
  arenaBytes: number;
  activeFilters: number;
  capacityNodes: number;
  capacityArenaBytes: number;
  /** Unlinked nodes waiting for readers to move on before reuse */
  retiredNodes: number;
  /** Node slots ever used (the slab's high-water mark) */
  nodesHighWater: number;
  /** Arena bytes ever carved (the arena's high-water mark) */
  arenaHighWater: number;
}

const DEFAULT_MAX_NODES = 1 << 20;
const DEFAULT_ARENA_BYTES = 32 << 20;

export class TopicIndex {
  readonly shared: TopicIndexShared;
  private readonly control: Int32Array;
  private readonly nodes: Int32Array;
  private readonly slots: Int32Array;
  private readonly arena: Uint8Array;
  private readonly arenaText: Buffer; // same memory as `arena`, for filterOf decoding
  private readonly alloc: BuddyArena;
  private readonly maxNodes: number;
  private readonly slotMask: number;
  private readonly idBits: number;
  private readonly idMask: number;
  private readonly genMask: number;
  private readerAt = -1; // control index of this view's reader epoch
  // Per-thread scratch, reused across calls.
  private stack: Int32Array = new Int32Array(128); // (nodeId, level start) pairs
  private textScratch = Buffer.allocUnsafeSlow(256);
  private readonly w: IndexWriter;

  private constructor(shared: TopicIndexShared) {
    this.shared = shared;
    this.control = new Int32Array(shared.control);
    this.nodes = new Int32Array(shared.nodes);
    this.slots = new Int32Array(shared.slots);
    this.arena = new Uint8Array(shared.arena);
    this.arenaText = Buffer.from(shared.arena);
    this.maxNodes = this.control[C_MAX_NODES]!;
    this.slotMask = this.control[C_SLOT_COUNT]! - 1;
    this.idBits = this.control[C_ID_BITS]!;
    this.idMask = (1 << this.idBits) - 1;
    this.genMask = (1 << (31 - this.idBits)) - 1;
    const meta = new Uint8Array(shared.arenaMeta);
    this.alloc = new BuddyArena(this.control, C_ARENA, shared.arena, meta, this.control[C_ARENA_BYTES]!);
    this.w = new IndexWriter(
      this.control,
      this.nodes,
      this.slots,
      this.arena,
      this.alloc,
      this.maxNodes,
      this.slotMask,
      this.genMask,
      (parent, bytes, p, e) => this.childOf(parent, bytes, p, e),
    );
    this.claimReaderSlot();
  }

  static create(opts: TopicIndexOptions = {}): TopicIndex {
    const maxNodes = opts.maxNodes ?? DEFAULT_MAX_NODES;
    const arenaBytes = BuddyArena.usable(opts.arenaBytes ?? DEFAULT_ARENA_BYTES);
    if (!Number.isInteger(maxNodes) || maxNodes < 2 || maxNodes > 1 << 26) {
      throw new RangeError(`maxNodes must be an integer in [2, 2^26], got ${maxNodes}`);
    }
    if (!Number.isInteger(arenaBytes) || arenaBytes < 0 || arenaBytes > 2 ** 31 - 8) {
      throw new RangeError(`arenaBytes must be an integer in [0, 2^31), got ${arenaBytes}`);
    }
    const slotCount = nextPow2(2 * maxNodes);
    const shared: TopicIndexShared = {
      control: new SharedArrayBuffer(CONTROL_INTS * 4),
      nodes: new SharedArrayBuffer(maxNodes * NODE_STRIDE * 4),
      slots: new SharedArrayBuffer(slotCount * 2 * 4),
      arena: new SharedArrayBuffer(Math.max(arenaBytes, 8)),
      arenaMeta: new SharedArrayBuffer(Math.max(arenaBytes >> 3, 1)),
    };
    const control = new Int32Array(shared.control);
    control[C_MAX_NODES] = maxNodes;
    control[C_SLOT_COUNT] = slotCount;
    control[C_ARENA_BYTES] = arenaBytes;
    control[C_ID_BITS] = Math.max(1, Math.ceil(Math.log2(maxNodes)));
    control[C_FREE_HEAD] = -1;
    control[C_LIMBO_HEAD] = -1;
    control[C_LIMBO_TAIL] = -1;
    control[C_EPOCH] = 1;
    BuddyArena.init(control, C_ARENA);
    const nodes = new Int32Array(shared.nodes);
    nodes[F_PARENT] = -1;
    nodes[F_LEN] = LEN_ROOT;
    control[C_NODE_COUNT] = 1;
    control[C_LIVE] = 1;
    control[C_VERSION] = LAYOUT_VERSION;
    Atomics.store(control, C_MAGIC, MAGIC); // last: marks the block initialised
    return new TopicIndex(shared);
  }

  static attach(shared: TopicIndexShared): TopicIndex {
    const control = new Int32Array(shared.control);
    if (
      Atomics.load(control, C_MAGIC) !== MAGIC ||
      control[C_VERSION] !== LAYOUT_VERSION ||
      !shared.arenaMeta
    ) {
      throw new Error('TopicIndex.attach: not an initialised topic index of this layout version');
    }
    return new TopicIndex(shared);
  }

  /** Give back this view's reader slot (a view that is dropped without it keeps the slot). */
  close(): void {
    if (this.readerAt < 0) return;
    Atomics.store(this.control, this.readerAt, 0);
    Atomics.store(this.control, this.readerAt - 1, 0);
    this.readerAt = -1;
  }

  /**
   * Reference of the filter's node, created if missing, with the shard's bit set — all under the
   * writer lock, so the node cannot be removed in between. -1 when the index is full.
   */
  acquire(filter: string, shard: number): number {
    const bit = this.shardBit(shard);
    const len = this.encode(filter);
    this.w.lock();
    try {
      const id = this.w.insertLocked(this.textScratch, len);
      if (id < 0) return -1;
      this.w.setBitLocked(id, bit);
      return this.refOf(id);
    } finally {
      this.w.unlock();
    }
  }

  /**
   * Reference for a filter, creating missing nodes but setting no bit; -1 when full. A node
   * nobody holds a bit on can be removed by any thread's clearShard: use `acquire` to subscribe.
   */
  ensure(filter: string): number {
    const len = this.encode(filter);
    this.w.lock();
    try {
      const id = this.w.insertLocked(this.textScratch, len);
      return id < 0 ? -1 : this.refOf(id);
    } finally {
      this.w.unlock();
    }
  }

  /** Lookup without creating; -1 if absent. */
  find(filter: string): number {
    const len = this.encode(filter);
    this.enterRead();
    try {
      const id = this.findBytes(this.textScratch, len);
      return id > 0 ? this.refOf(id) : -1;
    } finally {
      this.exitRead();
    }
  }

  /** Sets the shard's bit on a live node; false if the reference is stale (node removed). */
  setShard(ref: number, shard: number): boolean {
    const bit = this.shardBit(shard);
    const id = this.idOf(ref, false);
    this.w.lock();
    try {
      if (!this.isCurrent(id, ref)) return false;
      this.w.setBitLocked(id, bit);
      return true;
    } finally {
      this.w.unlock();
    }
  }

  /**
   * Clears the shard's bit. A node left with no bits and no children is removed, and so are the
   * ancestors that become empty; their space is reused after the readers' grace period. Clearing
   * a bit the caller does not hold, or on a stale reference, does nothing.
   */
  clearShard(ref: number, shard: number): void {
    const bit = this.shardBit(shard);
    const id = this.idOf(ref, false);
    // Our bit set means the node cannot be removed under us, so this check stays true.
    if (!this.isCurrent(id, ref)) return;
    const old = Atomics.and(this.nodes, id * NODE_STRIDE + F_MASK, ~bit);
    if (old !== bit) {
      // Other shards still subscribe here: no node goes, but the mask changed, so whoever
      // caches a match (shard-link.ts: the last topic's peer mask) must see a new change count.
      if ((old & bit) !== 0) this.w.changed();
      return;
    }
    Atomics.sub(this.control, C_ACTIVE, 1);
    this.w.lock();
    try {
      this.w.pruneLocked(id);
      if (Atomics.load(this.control, C_LIMBO_COUNT) >= RECLAIM_BATCH) this.w.reclaimLocked();
    } finally {
      this.w.unlock();
    }
  }

  /**
   * A restarted shard (durable mode) after restoring its persistent sessions: its bit is cleared
   * on every node that `keep` (a node reference) does not claim — what its dead predecessor's
   * clean sessions had subscribed — and nodes left empty are removed.
   */
  clearShardUnless(shard: number, keep: (ref: number) => boolean): void {
    const bit = this.shardBit(shard);
    const nodes = this.nodes;
    this.w.lock();
    try {
      const count = Atomics.load(this.control, C_NODE_COUNT);
      for (let id = 1; id < count; id++) {
        const at = id * NODE_STRIDE + F_MASK;
        if ((Atomics.load(nodes, at) & bit) === 0 || keep(this.refOf(id))) continue;
        if (Atomics.and(nodes, at, ~bit) === bit) {
          Atomics.sub(this.control, C_ACTIVE, 1);
          this.w.pruneLocked(id);
        }
      }
      this.w.reclaimLocked();
    } finally {
      this.w.unlock();
    }
  }

  /** After a shard crashed: clear its bit on every node, then remove the nodes left empty. */
  clearShardEverywhere(shard: number): void {
    this.clearShardUnless(shard, keepNone);
  }

  /**
   * Match a topic name given as UTF-8 bytes in topic[start, end) (e.g. a subarray of a PUBLISH
   * frame). Fills `out` with the references of matching nodes whose mask != 0 and returns the
   * count. Each node appears at most once: a node's depth fixes which topic level it is tried
   * against, and its path from the root is unique, so the walk reaches it at most once.
   */
  match(topic: Uint8Array, start: number, end: number, out: MatchResult): number {
    this.enterRead();
    try {
      return this.matchIn(topic, start, end, out);
    } finally {
      this.exitRead();
    }
  }

  /** Convenience for tests and cold paths (encodes into per-instance scratch). */
  matchString(topic: string, out: MatchResult): number {
    const len = this.encode(topic);
    return this.match(this.textScratch, 0, len, out);
  }

  /** Reconstruct the filter text of a node ('' for the root). */
  filterOf(ref: number): string {
    const nodeId = this.idOf(ref, true);
    const nodes = this.nodes;
    const levels: string[] = [];
    this.enterRead();
    try {
      for (let id = nodeId; id !== 0; id = nodes[id * NODE_STRIDE + F_PARENT]!) {
        const base = id * NODE_STRIDE;
        const len = nodes[base + F_LEN]!;
        if (len === LEN_PLUS) levels.push('+');
        else if (len === LEN_HASH) levels.push('#');
        else {
          const off = nodes[base + F_OFF]!;
          levels.push(this.arenaText.toString('utf8', off, off + len));
        }
      }
    } finally {
      this.exitRead();
    }
    return levels.reverse().join('/');
  }

  /**
   * Reference of node `id` (1 ≤ id < stats().nodesHighWater) in its current generation, or -1
   * when that slot is free or retired: lets a scanner tell a reused slot from the node it saw.
   */
  liveRef(id: number): number {
    return this.nodes[id * NODE_STRIDE + F_STATE] === 0 ? this.refOf(id) : -1;
  }

  /** Shard mask of a node, as uint32. */
  maskOf(ref: number): number {
    return Atomics.load(this.nodes, this.idOf(ref, false) * NODE_STRIDE + F_MASK) >>> 0;
  }

  /** Filters with at least one shard bit set; cheap enough for the publish path. */
  activeFilters(): number {
    return Atomics.load(this.control, C_ACTIVE);
  }

  /**
   * Count of writes so far (any thread's): what `whenChanged` compares against. Every write
   * bumps it after it is done, so a match made after reading a count is valid while the count is.
   */
  changes(): number {
    return Atomics.load(this.control, C_CHANGES);
  }

  /**
   * Calls `fn` once, as soon as some thread has written to the index since `changes()` returned
   * `seen` (at once if it already has). No timer: an idle index costs its watcher nothing.
   */
  whenChanged(seen: number, fn: () => void): void {
    const r = waitAsync(this.control, C_CHANGES, seen);
    if (r.async) void (r.value as Promise<string>).then(fn);
    else setImmediate(fn);
  }

  stats(): TopicIndexStats {
    const c = this.control;
    return {
      nodes: Atomics.load(c, C_LIVE),
      arenaBytes: this.alloc.used(),
      activeFilters: Atomics.load(c, C_ACTIVE),
      capacityNodes: this.maxNodes,
      capacityArenaBytes: c[C_ARENA_BYTES]!,
      retiredNodes: Atomics.load(c, C_LIMBO_COUNT),
      nodesHighWater: Atomics.load(c, C_NODE_COUNT),
      arenaHighWater: this.alloc.carved(),
    };
  }

  /** Reuse every retired node no reader can still hold (also run on demand by writers). */
  reclaim(): void {
    this.w.lock();
    try {
      this.w.reclaimLocked();
    } finally {
      this.w.unlock();
    }
  }

  /**
   * Free the writer lock and reader slots of a dead thread; true if it held the lock. Safe
   * because an interrupted write never published anything half-built. Call from a supervisor.
   */
  releaseLockHeldBy(deadThreadId: number): boolean {
    const tag = deadThreadId + 1;
    for (let i = 0; i < READER_SLOTS; i++) {
      const at = C_READERS + 2 * i;
      if (Atomics.load(this.control, at) !== tag) continue;
      Atomics.store(this.control, at + 1, 0);
      Atomics.store(this.control, at, 0);
    }
    if (Atomics.compareExchange(this.control, C_LOCK, tag, 0) !== tag) return false;
    Atomics.notify(this.control, C_LOCK, 1);
    return true;
  }

  // --- reading ---

  private matchIn(topic: Uint8Array, start: number, end: number, out: MatchResult): number {
    const nodes = this.nodes;
    const done = end + 1; // level position meaning "all topic levels consumed"
    // [MQTT-4.7.2-1]: '$' topics are not matched by a first-level wildcard.
    const dollar = start < end && topic[start] === DOLLAR;
    const idBits = this.idBits;
    let ids = out.nodeIds;
    let count = 0;
    let mask = 0;
    let stack = this.stack;
    stack[0] = 0;
    stack[1] = start;
    let sp = 2;
    while (sp > 0) {
      sp -= 2;
      const node = stack[sp]!;
      const p = stack[sp + 1]!;
      const base = node * NODE_STRIDE;
      const hashChild = Atomics.load(nodes, base + F_HASH);
      if (p === done) {
        const m = Atomics.load(nodes, base + F_MASK);
        if (m !== 0) {
          if (count === ids.length) ids = out.grow();
          ids[count++] = node | (nodes[base + F_GEN]! << idBits);
          mask |= m;
        }
        // "a/#" also matches "a".
        if (hashChild !== 0) {
          const hb = hashChild * NODE_STRIDE;
          const hm = Atomics.load(nodes, hb + F_MASK);
          if (hm !== 0) {
            if (count === ids.length) ids = out.grow();
            ids[count++] = hashChild | (nodes[hb + F_GEN]! << idBits);
            mask |= hm;
          }
        }
        continue;
      }
      const wildcardsAllowed = node !== 0 || !dollar;
      if (hashChild !== 0 && wildcardsAllowed) {
        const hb = hashChild * NODE_STRIDE;
        const hm = Atomics.load(nodes, hb + F_MASK);
        if (hm !== 0) {
          if (count === ids.length) ids = out.grow();
          ids[count++] = hashChild | (nodes[hb + F_GEN]! << idBits);
          mask |= hm;
        }
      }
      // Scan one level, hashing as we go.
      let h = FNV_OFFSET;
      let e = p;
      while (e < end) {
        const b = topic[e]!;
        if (b === SLASH) break;
        h = Math.imul(h ^ b, FNV_PRIME);
        e++;
      }
      const next = e < end ? e + 1 : done;
      if (sp + 4 > stack.length) stack = this.growStack();
      const plusChild = Atomics.load(nodes, base + F_PLUS);
      if (plusChild !== 0 && wildcardsAllowed) {
        stack[sp++] = plusChild;
        stack[sp++] = next;
      }
      const child = this.literalChild(node, h, topic, p, e);
      if (child !== 0) {
        stack[sp++] = child;
        stack[sp++] = next;
      }
    }
    out.count = count;
    out.mask = mask >>> 0;
    return count;
  }

  /** Announce a walk: writers keep every node we might reach until we leave. */
  private enterRead(): void {
    Atomics.store(this.control, this.readerAt, Atomics.load(this.control, C_EPOCH));
  }

  private exitRead(): void {
    Atomics.store(this.control, this.readerAt, 0);
  }

  private claimReaderSlot(): void {
    const tag = threadId + 1;
    for (let i = 0; i < READER_SLOTS; i++) {
      const at = C_READERS + 2 * i;
      if (Atomics.compareExchange(this.control, at, 0, tag) === 0) {
        this.readerAt = at + 1;
        return;
      }
    }
    throw new Error(`TopicIndex: all ${READER_SLOTS} reader slots are taken`);
  }

  /** Id of the literal child of `parent` whose level is bytes[p, e) with hash h; 0 if none. */
  private literalChild(parent: number, h: number, bytes: Uint8Array, p: number, e: number): number {
    const slots = this.slots;
    const nodes = this.nodes;
    const arena = this.arena;
    const slotMask = this.slotMask;
    const key = slotKey(parent, h);
    const len = e - p;
    let waiting = false;
    try {
      for (let attempt = 1; ; attempt++) {
        const seq = Atomics.load(this.control, C_SHIFT_SEQ);
        for (let i = slotIndex(key, slotMask); ; i = (i + 1) & slotMask) {
          const child = Atomics.load(slots, i << 1);
          if (child === 0) break;
          if (Atomics.load(slots, (i << 1) + 1) !== key) continue;
          const base = child * NODE_STRIDE;
          if (nodes[base + F_PARENT] !== parent || nodes[base + F_LEN] !== len) continue;
          // Hash hit: compare the bytes, collisions are real.
          const off = nodes[base + F_OFF]!;
          let k = 0;
          while (k < len && arena[off + k] === bytes[p + k]) k++;
          if (k === len) return child;
        }
        // A miss is only sure if no deletion moved entries meanwhile (point 4 above).
        if ((seq & 1) === 0 && Atomics.load(this.control, C_SHIFT_SEQ) === seq) return 0;
        // Under heavy unsubscribe churn we could keep missing: ask writers to pause (they wait
        // up to 1 ms before taking the lock), which bounds the walk and so how long it holds
        // back reclamation.
        if (attempt === OPTIMISTIC_PROBES) {
          Atomics.add(this.control, C_READERS_WAITING, 1);
          waiting = true;
        }
      }
    } finally {
      if (waiting) {
        Atomics.sub(this.control, C_READERS_WAITING, 1);
        Atomics.notify(this.control, C_READERS_WAITING);
      }
    }
  }

  private childOf(parent: number, bytes: Uint8Array, p: number, e: number): number {
    if (e - p === 1) {
      if (bytes[p] === PLUS) return Atomics.load(this.nodes, parent * NODE_STRIDE + F_PLUS);
      if (bytes[p] === HASH) return Atomics.load(this.nodes, parent * NODE_STRIDE + F_HASH);
    }
    return this.literalChild(parent, fnv1a32(bytes, p, e), bytes, p, e);
  }

  /** Node id of the filter in bytes[0, len), or 0 if absent (0 is the root, never a filter). */
  private findBytes(bytes: Uint8Array, len: number): number {
    let node = 0;
    let p = 0;
    for (;;) {
      const e = levelEnd(bytes, p, len);
      node = this.childOf(node, bytes, p, e);
      if (node === 0 || e === len) return node;
      p = e + 1;
    }
  }

  // --- helpers ---

  private refOf(id: number): number {
    return id | (this.nodes[id * NODE_STRIDE + F_GEN]! << this.idBits);
  }

  /** True if `ref` names the live node `id` in its current generation. */
  private isCurrent(id: number, ref: number): boolean {
    const base = id * NODE_STRIDE;
    return (
      this.nodes[base + F_STATE] === 0 && ((ref >>> this.idBits) & this.genMask) === this.nodes[base + F_GEN]
    );
  }

  private idOf(ref: number, allowRoot: boolean): number {
    if (!Number.isInteger(ref) || ref < (allowRoot ? 0 : 1)) {
      throw new RangeError(`invalid topic index node id ${ref}`);
    }
    const id = ref & this.idMask;
    if (id < (allowRoot ? 0 : 1) || id >= Atomics.load(this.control, C_NODE_COUNT)) {
      throw new RangeError(`unknown topic index node id ${ref}`);
    }
    return id;
  }

  /** UTF-8 encode into the per-instance scratch buffer; returns the byte length. */
  private encode(text: string): number {
    const need = text.length * 3; // UTF-16 unit -> at most 3 UTF-8 bytes
    if (need > this.textScratch.length) this.textScratch = Buffer.allocUnsafeSlow(nextPow2(need));
    return this.textScratch.write(text, 0, 'utf8');
  }

  private growStack(): Int32Array {
    const bigger = new Int32Array(this.stack.length * 2);
    bigger.set(this.stack);
    this.stack = bigger;
    return bigger;
  }

  private shardBit(shard: number): number {
    if (!Number.isInteger(shard) || shard < 0 || shard > 31) {
      throw new RangeError(`shard must be an integer in [0, 31], got ${shard}`);
    }
    return 1 << shard;
  }
}

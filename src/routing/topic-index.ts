/**
 * Shared-memory topic-filter trie.
 *
 * Every shard worker attaches to the same SharedArrayBuffers and matches PUBLISH topics lock-free;
 * writers (subscribe/unsubscribe in any thread) serialise on an Atomics lock in the control block.
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
import { ARENA_CONTROL_INTS, BuddyArena, orderFor } from './arena.js';
import {
  DOLLAR,
  FNV_OFFSET,
  FNV_PRIME,
  fnv1a32,
  HASH,
  isWildcard,
  levelEnd,
  MatchResult,
  nextPow2,
  PLUS,
  SLASH,
  slotIndex,
  slotKey,
} from './index-util.js';

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

const MAGIC = 0x54494458; // 'TIDX'
const LAYOUT_VERSION = 2;

// Control block (Int32 indices).
const C_MAGIC = 0;
const C_VERSION = 1;
const C_LOCK = 2; // 0 = free, else owner threadId + 1
const C_LOCK_WAITERS = 3;
const C_NODE_COUNT = 4; // slab high-water: ids below it have been used
const C_LIVE = 5; // live nodes, root included
const C_ACTIVE = 6; // nodes with mask != 0
const C_MAX_NODES = 7;
const C_SLOT_COUNT = 8;
const C_ARENA_BYTES = 9;
const C_ID_BITS = 10;
const C_FREE_HEAD = 11; // free node ids (LIFO), -1 = none
const C_LIMBO_HEAD = 12; // retired nodes (FIFO, ascending tags)
const C_LIMBO_TAIL = 13;
const C_LIMBO_COUNT = 14;
const C_EPOCH = 15; // never 0 (0 marks an idle reader)
const C_SHIFT_SEQ = 16; // odd while a slot-table deletion moves entries
const C_FREE_COUNT = 17;
const C_READERS_WAITING = 18; // readers whose probes keep being disturbed by deletions
const C_ARENA = 20; // ARENA_CONTROL_INTS of allocator state
const C_READERS = C_ARENA + ARENA_CONTROL_INTS; // READER_SLOTS × [owner tag, epoch]
const READER_SLOTS = 128;
const CONTROL_INTS = C_READERS + 2 * READER_SLOTS;

// Node fields.
const NODE_STRIDE = 10;
const F_PARENT = 0;
const F_PLUS = 1;
const F_HASH = 2;
const F_MASK = 3;
const F_OFF = 4;
const F_LEN = 5; // >= 0 literal byte length, else one of the LEN_* kinds
const F_GEN = 6;
const F_CHILDREN = 7; // literal children (writer-only)
const F_LINK = 8; // next in the free or limbo list
const F_STATE = 9; // 0 live, else the retire tag (limbo) or FREE
const LEN_PLUS = -1;
const LEN_HASH = -2;
const LEN_ROOT = -3;
const FREE = -1;

/** Disturbed probes of a missing literal before the reader asks writers to pause. */
const OPTIMISTIC_PROBES = 4;

/** Limbo length that triggers a reclaim on removal, so retired nodes do not pile up. */
const RECLAIM_BATCH = 256;

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
  private newOffs = new Int32Array(16);

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
    this.lock();
    try {
      const id = this.insertLocked(this.textScratch, len);
      if (id < 0) return -1;
      this.setBitLocked(id, bit);
      return this.refOf(id);
    } finally {
      this.unlock();
    }
  }

  /**
   * Reference for a filter, creating missing nodes but setting no bit; -1 when full. A node
   * nobody holds a bit on can be removed by any thread's clearShard: use `acquire` to subscribe.
   */
  ensure(filter: string): number {
    const len = this.encode(filter);
    this.lock();
    try {
      const id = this.insertLocked(this.textScratch, len);
      return id < 0 ? -1 : this.refOf(id);
    } finally {
      this.unlock();
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
    this.lock();
    try {
      if (!this.isCurrent(id, ref)) return false;
      this.setBitLocked(id, bit);
      return true;
    } finally {
      this.unlock();
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
    if (old !== bit) return; // not ours, or other shards still subscribe here
    Atomics.sub(this.control, C_ACTIVE, 1);
    this.lock();
    try {
      this.pruneLocked(id);
      if (Atomics.load(this.control, C_LIMBO_COUNT) >= RECLAIM_BATCH) this.reclaimLocked();
    } finally {
      this.unlock();
    }
  }

  /** After a shard crashed: clear its bit on every node, then remove the nodes left empty. */
  clearShardEverywhere(shard: number): void {
    const bit = this.shardBit(shard);
    const nodes = this.nodes;
    this.lock();
    try {
      const count = Atomics.load(this.control, C_NODE_COUNT);
      for (let id = 1; id < count; id++) {
        const at = id * NODE_STRIDE + F_MASK;
        if ((Atomics.load(nodes, at) & bit) === 0) continue; // skip the RMW on the common case
        if (Atomics.and(nodes, at, ~bit) === bit) {
          Atomics.sub(this.control, C_ACTIVE, 1);
          this.pruneLocked(id);
        }
      }
      this.reclaimLocked();
    } finally {
      this.unlock();
    }
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

  /** Shard mask of a node, as uint32. */
  maskOf(ref: number): number {
    return Atomics.load(this.nodes, this.idOf(ref, false) * NODE_STRIDE + F_MASK) >>> 0;
  }

  /** Filters with at least one shard bit set; cheap enough for the publish path. */
  activeFilters(): number {
    return Atomics.load(this.control, C_ACTIVE);
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
    this.lock();
    try {
      this.reclaimLocked();
    } finally {
      this.unlock();
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

  // --- writing (all under the lock) ---

  private setBitLocked(id: number, bit: number): void {
    const old = Atomics.or(this.nodes, id * NODE_STRIDE + F_MASK, bit);
    // The RMW that observes the 0 -> non-0 transition is the only one that counts it.
    if (old === 0) Atomics.add(this.control, C_ACTIVE, 1);
  }

  private insertLocked(bytes: Uint8Array, len: number): number {
    // Descend through what exists (another writer may have added it before we got the lock).
    let node = 0;
    let p = 0;
    let e: number;
    for (;;) {
      e = levelEnd(bytes, p, len);
      const child = this.childOf(node, bytes, p, e);
      if (child === 0) break;
      if (e === len) return child;
      node = child;
      p = e + 1;
    }
    // Check node room and take the arena blocks before publishing anything, so a refusal
    // changes nothing.
    let n = 0;
    for (let q = p; ; ) {
      const qe = levelEnd(bytes, q, len);
      if (n === this.newOffs.length) this.growScratch();
      let off = 0;
      if (!isWildcard(bytes, q, qe) && qe > q) {
        off = this.allocBytes(qe - q);
        if (off < 0) {
          this.undoBlocks(bytes, p, len, n);
          return -1;
        }
      }
      this.newOffs[n++] = off;
      if (qe === len) break;
      q = qe + 1;
    }
    if (!this.hasNodes(n)) {
      this.undoBlocks(bytes, p, len, n);
      return -1;
    }
    for (let i = 0; ; i++) {
      node = this.createChild(this.allocNode(), this.newOffs[i]!, node, bytes, p, e);
      if (e === len) return node;
      p = e + 1;
      e = levelEnd(bytes, p, len);
    }
  }

  /** Free the arena blocks taken for the first n levels from p of an insert that was refused. */
  private undoBlocks(bytes: Uint8Array, p: number, len: number, n: number): void {
    let q = p;
    for (let i = 0; i < n; i++) {
      const qe = levelEnd(bytes, q, len);
      if (!isWildcard(bytes, q, qe) && qe > q) this.alloc.free(this.newOffs[i]!, orderFor(qe - q));
      q = qe + 1;
    }
  }

  /** True if n nodes can be taken (reclaiming retired ones if needed). */
  private hasNodes(n: number): boolean {
    const c = this.control;
    const room = () => c[C_FREE_COUNT]! + this.maxNodes - c[C_NODE_COUNT]!;
    if (room() >= n) return true;
    this.reclaimLocked();
    return room() >= n;
  }

  /** A free node id, reused before the slab grows; the caller checked hasNodes. */
  private allocNode(): number {
    const c = this.control;
    if (c[C_FREE_HEAD]! < 0 && c[C_LIMBO_COUNT]! > 0) this.reclaimLocked();
    const head = c[C_FREE_HEAD]!;
    if (head >= 0) {
      c[C_FREE_HEAD] = this.nodes[head * NODE_STRIDE + F_LINK]!;
      c[C_FREE_COUNT]!--;
      return head;
    }
    const id = c[C_NODE_COUNT]!;
    Atomics.store(c, C_NODE_COUNT, id + 1);
    return id;
  }

  private allocBytes(len: number): number {
    const order = orderFor(len);
    let off = this.alloc.alloc(order);
    if (off < 0 && this.control[C_LIMBO_COUNT]! > 0) {
      this.reclaimLocked();
      off = this.alloc.alloc(order);
    }
    return off;
  }

  private pushFree(id: number): void {
    const base = id * NODE_STRIDE;
    this.nodes[base + F_STATE] = FREE;
    this.nodes[base + F_LINK] = this.control[C_FREE_HEAD]!;
    this.control[C_FREE_HEAD] = id;
    this.control[C_FREE_COUNT]!++;
  }

  /** Fill in a taken node, then publish it; caller holds the lock. */
  private createChild(
    id: number,
    off: number,
    parent: number,
    bytes: Uint8Array,
    p: number,
    e: number,
  ): number {
    const nodes = this.nodes;
    const base = id * NODE_STRIDE;
    const len = e - p;
    const kind = len === 1 && bytes[p] === PLUS ? LEN_PLUS : len === 1 && bytes[p] === HASH ? LEN_HASH : len;
    // Write every field: the slot may hold a recycled node or what a dead writer left.
    nodes[base + F_PARENT] = parent;
    nodes[base + F_PLUS] = 0;
    nodes[base + F_HASH] = 0;
    nodes[base + F_MASK] = 0;
    nodes[base + F_OFF] = off;
    nodes[base + F_LEN] = kind;
    nodes[base + F_CHILDREN] = 0;
    nodes[base + F_LINK] = -1;
    nodes[base + F_STATE] = 0;
    if (kind > 0) this.arena.set(bytes.subarray(p, e), off);
    Atomics.add(this.control, C_LIVE, 1);
    // Publish last: readers reaching `id` through this store see all the writes above.
    if (kind === LEN_PLUS) Atomics.store(nodes, parent * NODE_STRIDE + F_PLUS, id);
    else if (kind === LEN_HASH) Atomics.store(nodes, parent * NODE_STRIDE + F_HASH, id);
    else {
      nodes[parent * NODE_STRIDE + F_CHILDREN]!++;
      const slots = this.slots;
      const key = slotKey(parent, fnv1a32(bytes, p, e));
      let i = slotIndex(key, this.slotMask);
      while (Atomics.load(slots, i << 1) !== 0) i = (i + 1) & this.slotMask;
      Atomics.store(slots, (i << 1) + 1, key);
      Atomics.store(slots, i << 1, id);
    }
    return id;
  }

  /** Unlink and retire `id` and then each ancestor while it has no bits and no children. */
  private pruneLocked(start: number): void {
    const nodes = this.nodes;
    const c = this.control;
    let id = start;
    while (id !== 0) {
      const base = id * NODE_STRIDE;
      if (
        nodes[base + F_STATE] !== 0 ||
        Atomics.load(nodes, base + F_MASK) !== 0 ||
        nodes[base + F_PLUS] !== 0 ||
        nodes[base + F_HASH] !== 0 ||
        nodes[base + F_CHILDREN] !== 0
      ) {
        return;
      }
      const parent = nodes[base + F_PARENT]!;
      const kind = nodes[base + F_LEN]!;
      if (kind === LEN_PLUS) Atomics.store(nodes, parent * NODE_STRIDE + F_PLUS, 0);
      else if (kind === LEN_HASH) Atomics.store(nodes, parent * NODE_STRIDE + F_HASH, 0);
      else {
        this.deleteSlot(id, parent, kind);
        nodes[parent * NODE_STRIDE + F_CHILDREN]!--;
      }
      // Tag read after the unlink (point 2 of the safety argument).
      nodes[base + F_STATE] = Atomics.load(c, C_EPOCH);
      nodes[base + F_LINK] = -1;
      const tail = c[C_LIMBO_TAIL]!;
      if (tail >= 0) nodes[tail * NODE_STRIDE + F_LINK] = id;
      else c[C_LIMBO_HEAD] = id;
      c[C_LIMBO_TAIL] = id;
      Atomics.add(c, C_LIMBO_COUNT, 1);
      Atomics.sub(c, C_LIVE, 1);
      id = parent;
    }
  }

  /** Remove the slot of literal child `id`, shifting later entries of its cluster back. */
  private deleteSlot(id: number, parent: number, len: number): void {
    const slots = this.slots;
    const mask = this.slotMask;
    const off = this.nodes[id * NODE_STRIDE + F_OFF]!;
    const key = slotKey(parent, fnv1a32(this.arena, off, off + len));
    let hole = slotIndex(key, mask);
    while (slots[hole << 1] !== id) hole = (hole + 1) & mask;
    Atomics.add(this.control, C_SHIFT_SEQ, 1); // odd: probes that miss now retry
    Atomics.store(slots, hole << 1, 0);
    for (let j = (hole + 1) & mask; ; j = (j + 1) & mask) {
      const child = slots[j << 1]!;
      if (child === 0) break;
      const k = slots[(j << 1) + 1]!;
      const home = slotIndex(k, mask);
      // The entry stays if its home lies cyclically in (hole, j].
      if (hole <= j ? hole < home && home <= j : hole < home || home <= j) continue;
      Atomics.store(slots, (hole << 1) + 1, k);
      Atomics.store(slots, hole << 1, child);
      Atomics.store(slots, j << 1, 0);
      hole = j;
    }
    Atomics.add(this.control, C_SHIFT_SEQ, 1);
  }

  /** Move retired nodes no reader can hold to the free list, freeing their arena blocks. */
  private reclaimLocked(): void {
    const c = this.control;
    const nodes = this.nodes;
    if (c[C_LIMBO_HEAD]! < 0) return;
    // New readers announce a later epoch than any tag given so far (point 3).
    // Only writers (under the lock) change it; 0 is skipped because it marks an idle reader.
    const epoch = (c[C_EPOCH]! + 1) | 0;
    Atomics.store(c, C_EPOCH, epoch === 0 ? 1 : epoch);
    let oldest = 0; // oldest announced epoch, 0 = no reader inside a walk
    for (let i = 0; i < READER_SLOTS; i++) {
      const r = Atomics.load(c, C_READERS + 2 * i + 1);
      if (r !== 0 && (oldest === 0 || ((r - oldest) | 0) < 0)) oldest = r;
    }
    let id = c[C_LIMBO_HEAD]!;
    while (id >= 0) {
      const base = id * NODE_STRIDE;
      const tag = nodes[base + F_STATE]!;
      if (oldest !== 0 && ((oldest - tag) | 0) <= 0) break; // a reader from then may hold it
      const next = nodes[base + F_LINK]!;
      const len = nodes[base + F_LEN]!;
      if (len > 0) this.alloc.free(nodes[base + F_OFF]!, orderFor(len));
      nodes[base + F_GEN] = (nodes[base + F_GEN]! + 1) & this.genMask;
      this.pushFree(id);
      Atomics.sub(c, C_LIMBO_COUNT, 1);
      id = next;
    }
    c[C_LIMBO_HEAD] = id;
    if (id < 0) c[C_LIMBO_TAIL] = -1;
  }

  private lock(): void {
    const control = this.control;
    const tag = threadId + 1;
    // Let a reader that keeps missing finish its probe first (bounded: one wait of <= 1 ms).
    const readers = Atomics.load(control, C_READERS_WAITING);
    if (readers > 0) Atomics.wait(control, C_READERS_WAITING, readers, 1);
    if (Atomics.compareExchange(control, C_LOCK, 0, tag) === 0) return;
    // Registered waiters make unlock() notify; a notify that races ahead of our wait() is not
    // lost because wait() returns at once when the lock word no longer holds `held`.
    Atomics.add(control, C_LOCK_WAITERS, 1);
    try {
      for (;;) {
        const held = Atomics.compareExchange(control, C_LOCK, 0, tag);
        if (held === 0) return;
        if (held === tag) throw new Error('TopicIndex: writer lock is not re-entrant');
        Atomics.wait(control, C_LOCK, held);
      }
    } finally {
      Atomics.sub(control, C_LOCK_WAITERS, 1);
    }
  }

  private unlock(): void {
    Atomics.store(this.control, C_LOCK, 0);
    if (Atomics.load(this.control, C_LOCK_WAITERS) > 0) Atomics.notify(this.control, C_LOCK, 1);
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

  private growScratch(): void {
    const offs = new Int32Array(this.newOffs.length * 2);
    offs.set(this.newOffs);
    this.newOffs = offs;
  }

  private shardBit(shard: number): number {
    if (!Number.isInteger(shard) || shard < 0 || shard > 31) {
      throw new RangeError(`shard must be an integer in [0, 31], got ${shard}`);
    }
    return 1 << shard;
  }
}

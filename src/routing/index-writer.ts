/**
 * Writer side of the topic index (topic-index.ts): inserts, removals, the slot-table deletion
 * and reclamation. Every method runs under the writer lock (except lock/unlock themselves); the
 * ordering rules readers rely on are argued in topic-index.ts's header.
 */
import { threadId } from 'node:worker_threads';
import { type BuddyArena, orderFor } from './arena.js';
import {
  C_ACTIVE,
  C_CHANGES,
  C_EPOCH,
  C_FREE_COUNT,
  C_FREE_HEAD,
  C_LIMBO_COUNT,
  C_LIMBO_HEAD,
  C_LIMBO_TAIL,
  C_LIVE,
  C_LOCK,
  C_LOCK_WAITERS,
  C_NODE_COUNT,
  C_READERS,
  C_READERS_WAITING,
  C_SHIFT_SEQ,
  F_CHILDREN,
  F_GEN,
  F_HASH,
  F_LEN,
  F_LINK,
  F_MASK,
  F_OFF,
  F_PARENT,
  F_PLUS,
  F_STATE,
  FREE,
  LEN_HASH,
  LEN_PLUS,
  NODE_STRIDE,
  READER_SLOTS,
} from './index-layout.js';
import { fnv1a32, HASH, isWildcard, levelEnd, PLUS, slotIndex, slotKey } from './index-util.js';

/** Child of `parent` for the level bytes[p, e); 0 if none (the reader-side lookup). */
export type ChildLookup = (parent: number, bytes: Uint8Array, p: number, e: number) => number;

export class IndexWriter {
  private newOffs = new Int32Array(16);

  constructor(
    private readonly control: Int32Array,
    private readonly nodes: Int32Array,
    private readonly slots: Int32Array,
    private readonly arena: Uint8Array,
    private readonly alloc: BuddyArena,
    private readonly maxNodes: number,
    private readonly slotMask: number,
    private readonly genMask: number,
    private readonly lookup: ChildLookup,
  ) {}

  setBitLocked(id: number, bit: number): void {
    const old = Atomics.or(this.nodes, id * NODE_STRIDE + F_MASK, bit);
    // The RMW that observes the 0 -> non-0 transition is the only one that counts it.
    if (old === 0) Atomics.add(this.control, C_ACTIVE, 1);
  }

  insertLocked(bytes: Uint8Array, len: number): number {
    // Descend through what exists (another writer may have added it before we got the lock).
    let node = 0;
    let p = 0;
    let e: number;
    for (;;) {
      e = levelEnd(bytes, p, len);
      const child = this.lookup(node, bytes, p, e);
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
  pruneLocked(start: number): void {
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
  reclaimLocked(): void {
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

  lock(): void {
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

  unlock(): void {
    Atomics.store(this.control, C_LOCK, 0);
    if (Atomics.load(this.control, C_LOCK_WAITERS) > 0) Atomics.notify(this.control, C_LOCK, 1);
    this.changed();
  }

  /** Bumps the change count: whoever watches the index (the cluster thread's route scan) wakes up. */
  changed(): void {
    Atomics.add(this.control, C_CHANGES, 1);
    Atomics.notify(this.control, C_CHANGES);
  }

  private growScratch(): void {
    const offs = new Int32Array(this.newOffs.length * 2);
    offs.set(this.newOffs);
    this.newOffs = offs;
  }
}

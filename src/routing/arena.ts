/**
 * Buddy allocator for the topic index's level-text arena (a SharedArrayBuffer).
 *
 * Blocks are powers of two from 8 B (MIN_ORDER) to 64 KiB (MAX_ORDER, the longest level a 65,535
 * byte filter can have). Freed blocks merge with their buddy, so churn of mixed sizes does not
 * strand space in the wrong size class: after everything is freed the arena is whole again.
 * Internal waste is below 2× per level (a 5-byte level takes 8 B).
 *
 * Only writers use it, under the index's writer lock, and only on blocks no reader can still be
 * comparing (the index frees a block after the grace period of its node, see topic-index.ts), so
 * plain reads and writes suffice here. A free block holds its list links (next, prev) in its first
 * 8 bytes; `meta[off / 8]` is order + 1 at the start of a free block, else 0.
 *
 * Space is carved lazily, one 64 KiB block at a time from `top`, so an unused arena touches no
 * pages (SAB pages are committed by the OS on first write).
 */

export const MIN_ORDER = 3;
export const MAX_ORDER = 16;
const MAX_BLOCK = 1 << MAX_ORDER;

/** Control-block ints the allocator needs, from `base`: heads per order, top, used bytes. */
export const ARENA_CONTROL_INTS = MAX_ORDER - MIN_ORDER + 1 + 3;
const A_TOP = MAX_ORDER - MIN_ORDER + 1; // bytes carved so far
const A_USED = A_TOP + 1; // bytes in allocated blocks
const A_REMAINDER = A_TOP + 2; // 1 once the tail smaller than MAX_BLOCK was carved

/** Order of the block for a level of `len` (> 0) bytes. */
export function orderFor(len: number): number {
  let k = MIN_ORDER;
  while (1 << k < len) k++;
  return k;
}

export class BuddyArena {
  private readonly links: Int32Array;

  constructor(
    private readonly control: Int32Array,
    private readonly base: number,
    arena: SharedArrayBuffer,
    private readonly meta: Uint8Array,
    private readonly bytes: number,
  ) {
    this.links = new Int32Array(arena, 0, arena.byteLength >> 2);
  }

  /** Initialise the control ints of a new arena (all lists empty, nothing carved). */
  static init(control: Int32Array, base: number): void {
    for (let k = MIN_ORDER; k <= MAX_ORDER; k++) control[base + k - MIN_ORDER] = -1;
    control[base + A_TOP] = 0;
    control[base + A_USED] = 0;
    control[base + A_REMAINDER] = 0;
  }

  /** Arena size to allocate for `bytes` of capacity: whole 8-byte units. */
  static usable(bytes: number): number {
    return bytes & ~7;
  }

  used(): number {
    return Atomics.load(this.control, this.base + A_USED);
  }

  /** Bytes carved from the arena so far (its high-water mark). */
  carved(): number {
    return Atomics.load(this.control, this.base + A_TOP);
  }

  /** Offset of a free block of 2^order bytes, or -1 when none is left. */
  alloc(order: number): number {
    let k = order;
    while (k <= MAX_ORDER && this.head(k) < 0) k++;
    if (k > MAX_ORDER && !this.carve()) return -1;
    k = order;
    while (k <= MAX_ORDER && this.head(k) < 0) k++;
    if (k > MAX_ORDER) return -1;
    const off = this.pop(k);
    // Split down: the upper halves go to the smaller lists.
    while (k > order) {
      k--;
      this.push(off + (1 << k), k);
    }
    Atomics.add(this.control, this.base + A_USED, 1 << order);
    return off;
  }

  free(off: number, order: number): void {
    Atomics.sub(this.control, this.base + A_USED, 1 << order);
    let k = order;
    let at = off;
    const top = this.control[this.base + A_TOP]!;
    while (k < MAX_ORDER) {
      const buddy = at ^ (1 << k);
      if (buddy + (1 << k) > top || this.meta[buddy >> 3] !== k + 1) break;
      this.unlink(buddy, k);
      at = Math.min(at, buddy);
      k++;
    }
    this.push(at, k);
  }

  /** Carve more of the arena into free blocks; false when it is all carved. */
  private carve(): boolean {
    const c = this.control;
    const top = c[this.base + A_TOP]!;
    if (top + MAX_BLOCK <= this.bytes) {
      c[this.base + A_TOP] = top + MAX_BLOCK;
      this.push(top, MAX_ORDER);
      return true;
    }
    if (c[this.base + A_REMAINDER] === 1) return false;
    c[this.base + A_REMAINDER] = 1;
    // The tail: aligned blocks, largest first (top is MAX_BLOCK-aligned, so they are aligned).
    let off = top;
    for (let k = MAX_ORDER - 1; k >= MIN_ORDER; k--) {
      if (off + (1 << k) > this.bytes) continue;
      this.push(off, k);
      off += 1 << k;
    }
    c[this.base + A_TOP] = off;
    return off > top;
  }

  private head(k: number): number {
    return this.control[this.base + k - MIN_ORDER]!;
  }

  private push(off: number, k: number): void {
    const h = this.head(k);
    const w = off >> 2;
    this.links[w] = h;
    this.links[w + 1] = -1;
    if (h >= 0) this.links[(h >> 2) + 1] = off;
    this.control[this.base + k - MIN_ORDER] = off;
    this.meta[off >> 3] = k + 1;
  }

  private pop(k: number): number {
    const off = this.head(k);
    this.unlink(off, k);
    return off;
  }

  private unlink(off: number, k: number): void {
    const w = off >> 2;
    const next = this.links[w]!;
    const prev = this.links[w + 1]!;
    if (prev >= 0) this.links[prev >> 2] = next;
    else this.control[this.base + k - MIN_ORDER] = next;
    if (next >= 0) this.links[(next >> 2) + 1] = prev;
    this.meta[off >> 3] = 0;
  }
}

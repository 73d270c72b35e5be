/** Hashing, byte scanning and the reusable match output of the topic index (topic-index.ts). */

export const SLASH = 0x2f;
export const PLUS = 0x2b;
export const HASH = 0x23;
export const DOLLAR = 0x24;

export const FNV_OFFSET = 0x811c9dc5 | 0;
export const FNV_PRIME = 0x01000193;

/** FNV-1a 32 of bytes[start, end), as int32. Exported so tests can construct real collisions. */
export function fnv1a32(bytes: Uint8Array, start: number, end: number): number {
  let h = FNV_OFFSET;
  for (let i = start; i < end; i++) h = Math.imul(h ^ bytes[i]!, FNV_PRIME);
  return h;
}

// Slot key mixes the parent in, so equal levels under different parents land apart.
export function slotKey(parent: number, levelHash: number): number {
  return (levelHash ^ Math.imul(parent + 1, 0x9e3779b1)) | 0;
}

// murmur3 finaliser: spreads keys over the low bits used for the slot index.
export function slotIndex(key: number, slotMask: number): number {
  let h = key;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h & slotMask;
}

export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** End (exclusive) of the level starting at p: the next '/' or len. */
export function levelEnd(bytes: Uint8Array, p: number, len: number): number {
  let e = p;
  while (e < len && bytes[e] !== SLASH) e++;
  return e;
}

export function isWildcard(bytes: Uint8Array, p: number, e: number): boolean {
  return e - p === 1 && (bytes[p] === PLUS || bytes[p] === HASH);
}

/** Reusable match output: no allocation per match, `nodeIds` grows only when full. */
export class MatchResult {
  /** Node references (see TopicIndex: slot id plus generation), not raw slot ids. */
  nodeIds: Int32Array;
  count = 0;
  /** OR of the shard masks of the matched nodes, as uint32. */
  mask = 0;

  constructor(initialCapacity = 64) {
    this.nodeIds = new Int32Array(Math.max(1, initialCapacity));
  }

  /** @internal called by match() when nodeIds is full. */
  grow(): Int32Array {
    const bigger = new Int32Array(this.nodeIds.length * 2);
    bigger.set(this.nodeIds);
    this.nodeIds = bigger;
    return bigger;
  }
}

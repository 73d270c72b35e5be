/**
 * Shared-memory layout of the topic index (topic-index.ts): control-block ints, node fields and
 * tuning constants, shared by the reader side and the writer side (index-writer.ts).
 */
import { ARENA_CONTROL_INTS } from './arena.js';

export const MAGIC = 0x54494458; // 'TIDX'
export const LAYOUT_VERSION = 2;

// Control block (Int32 indices).
export const C_MAGIC = 0;
export const C_VERSION = 1;
export const C_LOCK = 2; // 0 = free, else owner threadId + 1
export const C_LOCK_WAITERS = 3;
export const C_NODE_COUNT = 4; // slab high-water: ids below it have been used
export const C_LIVE = 5; // live nodes, root included
export const C_ACTIVE = 6; // nodes with mask != 0
export const C_MAX_NODES = 7;
export const C_SLOT_COUNT = 8;
export const C_ARENA_BYTES = 9;
export const C_ID_BITS = 10;
export const C_FREE_HEAD = 11; // free node ids (LIFO), -1 = none
export const C_LIMBO_HEAD = 12; // retired nodes (FIFO, ascending tags)
export const C_LIMBO_TAIL = 13;
export const C_LIMBO_COUNT = 14;
export const C_EPOCH = 15; // never 0 (0 marks an idle reader)
export const C_SHIFT_SEQ = 16; // odd while a slot-table deletion moves entries
export const C_FREE_COUNT = 17;
export const C_READERS_WAITING = 18; // readers whose probes keep being disturbed by deletions
export const C_CHANGES = 19; // bumped (and notified) by every writer unlock: a watcher's wake-up
export const C_ARENA = 20; // ARENA_CONTROL_INTS of allocator state
export const C_READERS = C_ARENA + ARENA_CONTROL_INTS; // READER_SLOTS × [owner tag, epoch]
export const READER_SLOTS = 128;
export const CONTROL_INTS = C_READERS + 2 * READER_SLOTS;

// Node fields.
export const NODE_STRIDE = 10;
export const F_PARENT = 0;
export const F_PLUS = 1;
export const F_HASH = 2;
export const F_MASK = 3;
export const F_OFF = 4;
export const F_LEN = 5; // >= 0 literal byte length, else one of the LEN_* kinds
export const F_GEN = 6;
export const F_CHILDREN = 7; // literal children (writer-only)
export const F_LINK = 8; // next in the free or limbo list
export const F_STATE = 9; // 0 live, else the retire tag (limbo) or FREE
export const LEN_PLUS = -1;
export const LEN_HASH = -2;
export const LEN_ROOT = -3;
export const FREE = -1;

/** Disturbed probes of a missing literal before the reader asks writers to pause. */
export const OPTIMISTIC_PROBES = 4;

/** Limbo length that triggers a reclaim on removal, so retired nodes do not pile up. */
export const RECLAIM_BATCH = 256;

import type { RetainedRecord } from '../threads/messages.js';
import type { RetainedCursor, RetainedStore } from './store.js';

/** Payload bytes per chunk at most (records per chunk: retainer.flow_control.batch_read_number). */
const CHUNK_BYTES = 64 * 1024;
/** A cursor its shard stopped asking for (the shard died, a bug) is dropped after this. */
const IDLE_MS = 60_000;

interface Lookup {
  /** One cursor per filter of the lookup, walked in turn */
  cursors: RetainedCursor[];
  usedAt: number;
}

export interface RetainedChunk {
  records: RetainedRecord[];
  /** The shard asks for the next chunk with retainedNext (or stops with retainedCancel) */
  more: boolean;
}

/**
 * Main's side of retained delivery on subscribe, paged: a lookup's matches are walked and sent
 * to the shard in bounded chunks, the next one only when the shard asks (its subscriber's socket
 * took the previous one). A `#` subscriber that never reads thus holds one chunk in its shard,
 * and main holds a walk position per lookup (a few frames), never the list of matches.
 */
export class RetainedPager {
  private readonly lookups = new Map<string, Lookup>();

  constructor(
    private readonly store: RetainedStore,
    /** Records per chunk (read per chunk, so a reload applies to the next one) */
    private readonly batch: () => number,
  ) {}

  /** The first chunk for (shard, reqId). A restarted shard reuses ids: this replaces the old. */
  first(shard: number, reqId: number, filters: string[]): RetainedChunk {
    const now = Date.now();
    if (this.lookups.size > 0) {
      for (const [key, l] of this.lookups) if (now - l.usedAt > IDLE_MS) this.lookups.delete(key);
    }
    const lookup: Lookup = { cursors: filters.map((f) => this.store.cursor(f)), usedAt: now };
    const key = `${shard}:${reqId}`;
    const chunk = take(lookup, this.batch());
    if (chunk.more) this.lookups.set(key, lookup);
    else this.lookups.delete(key);
    return chunk;
  }

  /** The next chunk, or null when the lookup is gone (finished, cancelled or idle too long). */
  next(shard: number, reqId: number): RetainedChunk | null {
    const key = `${shard}:${reqId}`;
    const lookup = this.lookups.get(key);
    if (!lookup) return null;
    lookup.usedAt = Date.now();
    const chunk = take(lookup, this.batch());
    if (!chunk.more) this.lookups.delete(key);
    return chunk;
  }

  cancel(shard: number, reqId: number): void {
    this.lookups.delete(`${shard}:${reqId}`);
  }

  /** Lookups with more to send (for tests and debugging) */
  get open(): number {
    return this.lookups.size;
  }
}

/** Walks until a chunk is full or the walk's visit budget is spent (then possibly empty). */
function take(l: Lookup, max: number): RetainedChunk {
  const records: RetainedRecord[] = [];
  const cs = l.cursors;
  while (cs.length > 0 && records.length < max) {
    cs[0].next(records, max - records.length, CHUNK_BYTES);
    // Not done: the chunk is full or the visit budget is spent.
    if (!cs[0].done) break;
    cs.shift();
  }
  return { records, more: cs.length > 0 };
}

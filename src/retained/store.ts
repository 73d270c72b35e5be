import type { RetainedRecord } from '../threads/messages.js';

interface Node {
  children: Map<string, Node> | null;
  record: RetainedRecord | null;
  /** Store sequence when `record` was set (see RetainedCursor's snapshot) */
  seq: number;
}

function newNode(): Node {
  return { children: null, record: null, seq: 0 };
}

/**
 * Retained messages by topic, in a level trie so that a wildcard subscription finds its matches
 * without scanning every retained topic. Owned by the main thread, the single authority that
 * every shard asks (see docs/ARCHITECTURE.md for why not a per-shard replica).
 */
export class RetainedStore {
  private readonly root = newNode();
  private count = 0;
  /** Incremented per stored message */
  private seq = 0;

  get size(): number {
    return this.count;
  }

  /**
   * Stores a retained message; an empty payload deletes the topic's retained message
   * [MQTT-3.3.1-10]. Returns false when a limit refused it (0 = no limit): a payload over
   * `maxPayload` bytes, or a new topic when `maxMessages` are stored (replacing one is allowed).
   * The old message, if any, stays, as in EMQX's retainer.
   */
  set(record: RetainedRecord, maxMessages = 0, maxPayload = 0): boolean {
    const levels = record.topic.split('/');
    if (record.payload.length === 0) {
      this.remove(levels);
      return true;
    }
    if (maxPayload > 0 && record.payload.length > maxPayload) return false;
    if (maxMessages > 0 && this.count >= maxMessages && !this.get(record.topic)) return false;
    let node = this.root;
    for (const level of levels) {
      if (!node.children) node.children = new Map();
      let next = node.children.get(level);
      if (!next) {
        next = newNode();
        node.children.set(level, next);
      }
      node = next;
    }
    if (!node.record) this.count++;
    node.record = record;
    node.seq = ++this.seq;
    return true;
  }

  get(topic: string): RetainedRecord | null {
    let node: Node | undefined = this.root;
    for (const level of topic.split('/')) {
      node = node.children?.get(level);
      if (!node) return null;
    }
    return node.record;
  }

  private remove(levels: string[]): void {
    const path: Node[] = [this.root];
    let node = this.root;
    for (const level of levels) {
      const next = node.children?.get(level);
      if (!next) return;
      path.push(next);
      node = next;
    }
    if (!node.record) return;
    node.record = null;
    this.count--;
    // Prune empty branches so that churn on unique topics does not leak nodes.
    for (let i = levels.length; i > 0; i--) {
      const n = path[i];
      if (n.record || (n.children && n.children.size > 0)) break;
      path[i - 1].children!.delete(levels[i - 1]);
    }
  }

  /** Every stored record, `$` topics included (a cluster peer's full sync). */
  all(): RetainedRecord[] {
    const out: RetainedRecord[] = [];
    const stack: Node[] = [this.root];
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (node.record) out.push(node.record);
      if (node.children) for (const child of node.children.values()) stack.push(child);
    }
    return out;
  }

  /** Retained messages whose topic matches `filter` (wildcards allowed), all at once. */
  match(filter: string, out: RetainedRecord[] = []): RetainedRecord[] {
    const c = this.cursor(filter);
    while (!c.done) c.next(out, Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY);
    return out;
  }

  /**
   * A resumable walk over the messages matching `filter`, as the store was when it was made:
   * a message stored later (a new topic, or a newer message on a topic) is skipped, because the
   * subscription already gets it live. Holds only a stack of child iterators (Map iterators
   * survive inserts and deletes), so a `#` over a million retained messages costs main no
   * array of a million references per subscriber and no walk of a million nodes at once.
   */
  cursor(filter: string): RetainedCursor {
    return new RetainedCursor(this, this.root, filter.split('/'), this.seq);
  }

  /** Deletes an expired message found by a cursor [MQTT-3.3.2-5]. */
  expire(topic: string): void {
    this.set({ topic, payload: new Uint8Array(0), qos: 0 });
  }
}

/** Nodes visited per `next` call at most, so that a sparse match cannot block main either. */
const VISIT_BUDGET = 4096;

/** A node still to match against `levels[depth]`, or the children of one being iterated. */
interface Frame {
  node: Node | null;
  iter: IterableIterator<[string, Node]> | null;
  depth: number;
  /** Iterating for '#': every node below is a match (else '+': each child matches one level) */
  all: boolean;
  /** At the root level under a wildcard: '$' topics never match [MQTT-4.7.2-1] */
  skipDollar: boolean;
}

/**
 * Depth-first over the trie with an explicit stack, never recursion: a topic may have as many
 * levels as a packet has bytes, and a recursive walk on main would overflow the stack (the
 * process dies). Pre-order, children in insertion order.
 */
export class RetainedCursor {
  private readonly stack: Frame[] = [];
  done = false;

  constructor(
    private readonly store: RetainedStore,
    root: Node,
    private readonly levels: string[],
    /** Store sequence when the lookup was made: later messages are skipped */
    private readonly snapshot: number,
  ) {
    this.stack.push({ node: root, iter: null, depth: 0, all: false, skipDollar: false });
  }

  /**
   * Appends up to `maxRecords` matches (or until their payloads pass `maxBytes`) to `out`;
   * `done` is set once the walk is over. May return with none appended and not done (the visit
   * budget ran out): call again.
   */
  next(out: RetainedRecord[], maxRecords: number, maxBytes: number): void {
    const stack = this.stack;
    const levels = this.levels;
    const from = out.length;
    let bytes = 0;
    let visits = 0;
    const now = Date.now();
    while (stack.length > 0 && out.length - from < maxRecords && bytes < maxBytes && visits < VISIT_BUDGET) {
      visits++;
      const f = stack[stack.length - 1];
      let node: Node;
      let depth: number;
      if (f.iter) {
        const r = f.iter.next();
        if (r.done) {
          stack.pop();
          continue;
        }
        if (f.skipDollar && r.value[0].startsWith('$')) continue;
        node = r.value[1];
        if (f.all) {
          bytes += this.emit(node, out, now);
          if (node.children && node.children.size > 0) stack.push(frame(null, node.children, 0, true, false));
          continue;
        }
        depth = f.depth;
      } else {
        stack.pop();
        node = f.node!;
        depth = f.depth;
      }
      if (depth === levels.length) {
        bytes += this.emit(node, out, now);
        continue;
      }
      const level = levels[depth];
      if (level === '#') {
        // '#' also matches the parent level [MQTT-4.7.1-2].
        if (depth > 0) bytes += this.emit(node, out, now);
        if (node.children) stack.push(frame(null, node.children, 0, true, depth === 0));
        continue;
      }
      if (!node.children) continue;
      if (level === '+') {
        stack.push(frame(null, node.children, depth + 1, false, depth === 0));
        continue;
      }
      const child = node.children.get(level);
      if (child) stack.push(frame(child, null, depth + 1, false, false));
    }
    if (stack.length === 0) this.done = true;
  }

  /** Appends the node's record if it is part of the snapshot and not expired; its size. */
  private emit(node: Node, out: RetainedRecord[], now: number): number {
    const rec = node.record;
    if (!rec || node.seq > this.snapshot) return 0;
    if (rec.expiryAt && rec.expiryAt < now) {
      // Expired messages (MQTT 5 Message Expiry Interval) are removed when found [MQTT-3.3.2-5].
      this.store.expire(rec.topic);
      return 0;
    }
    out.push(rec);
    return rec.payload.length + rec.topic.length;
  }
}

function frame(
  node: Node | null,
  children: Map<string, Node> | null,
  depth: number,
  all: boolean,
  skipDollar: boolean,
): Frame {
  return { node, iter: children ? children.entries() : null, depth, all, skipDollar };
}

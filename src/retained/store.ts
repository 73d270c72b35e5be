import type { RetainedRecord } from '../threads/messages.js';

interface Node {
  children: Map<string, Node> | null;
  record: RetainedRecord | null;
}

function newNode(): Node {
  return { children: null, record: null };
}

/**
 * Retained messages by topic, in a level trie so that a wildcard subscription finds its matches
 * without scanning every retained topic. Owned by the main thread, the single authority that
 * every shard asks (see docs/ARCHITECTURE.md for why not a per-shard replica).
 */
export class RetainedStore {
  private readonly root = newNode();
  private count = 0;

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
    if (this.root.record) out.push(this.root.record);
    this.collect(this.root, false, out);
    return out;
  }

  /** Retained messages whose topic matches `filter` (wildcards allowed). */
  match(filter: string, out: RetainedRecord[] = []): RetainedRecord[] {
    const levels = filter.split('/');
    const from = out.length;
    this.walk(this.root, levels, out);
    // Expired messages (MQTT 5 Message Expiry Interval) are removed when found [MQTT-3.3.2-5].
    const now = Date.now();
    let w = from;
    for (let r = from; r < out.length; r++) {
      const rec = out[r];
      if (rec.expiryAt && rec.expiryAt < now)
        this.set({ topic: rec.topic, payload: new Uint8Array(0), qos: 0 });
      else out[w++] = rec;
    }
    out.length = w;
    return out;
  }

  /**
   * Depth-first over the trie with an explicit stack, never recursion: a topic may have as many
   * levels as a packet has bytes, and a recursive walk on main would overflow the stack (the
   * process dies). Children are pushed in reverse so the order is that of a recursive walk.
   */
  private walk(root: Node, levels: string[], out: RetainedRecord[]): void {
    const nodes: Node[] = [root];
    const depth: number[] = [0];
    while (nodes.length > 0) {
      const node = nodes.pop()!;
      const i = depth.pop()!;
      if (i === levels.length) {
        if (node.record) out.push(node.record);
        continue;
      }
      const level = levels[i];
      if (level === '#') {
        // '#' also matches the parent level [MQTT-4.7.1-2]; '$' topics never match a leading wildcard.
        if (node.record && i > 0) out.push(node.record);
        this.collect(node, i === 0, out);
        continue;
      }
      if (!node.children) continue;
      if (level === '+') {
        const kids = [...node.children];
        for (let k = kids.length - 1; k >= 0; k--) {
          if (i === 0 && kids[k][0].startsWith('$')) continue; // [MQTT-4.7.2-1]
          nodes.push(kids[k][1]);
          depth.push(i + 1);
        }
        continue;
      }
      const child = node.children.get(level);
      if (child) {
        nodes.push(child);
        depth.push(i + 1);
      }
    }
  }

  /** Every record below `from` (not its own), pre-order, iteratively (see walk). */
  private collect(from: Node, atRoot: boolean, out: RetainedRecord[]): void {
    if (!from.children) return;
    const stack: Node[] = [];
    const push = (n: Node, skipDollar: boolean): void => {
      if (!n.children) return;
      const kids = [...n.children];
      for (let k = kids.length - 1; k >= 0; k--) {
        if (skipDollar && kids[k][0].startsWith('$')) continue;
        stack.push(kids[k][1]);
      }
    };
    push(from, atRoot);
    while (stack.length > 0) {
      const n = stack.pop()!;
      if (n.record) out.push(n.record);
      push(n, false);
    }
  }
}

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

  /** Stores a retained message; an empty payload deletes the topic's retained message [MQTT-3.3.1-10]. */
  set(record: RetainedRecord): void {
    const levels = record.topic.split('/');
    if (record.payload.length === 0) {
      this.remove(levels);
      return;
    }
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

  /** Retained messages whose topic matches `filter` (wildcards allowed). */
  match(filter: string, out: RetainedRecord[] = []): RetainedRecord[] {
    const levels = filter.split('/');
    const from = out.length;
    this.walk(this.root, levels, 0, out);
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

  private walk(node: Node, levels: string[], i: number, out: RetainedRecord[]): void {
    if (i === levels.length) {
      if (node.record) out.push(node.record);
      return;
    }
    const level = levels[i];
    if (level === '#') {
      // '#' also matches the parent level [MQTT-4.7.1-2]; '$' topics never match a leading wildcard.
      if (node.record && i > 0) out.push(node.record);
      this.collect(node, i === 0, out);
      return;
    }
    if (!node.children) return;
    if (level === '+') {
      for (const [name, child] of node.children) {
        if (i === 0 && name.startsWith('$')) continue; // [MQTT-4.7.2-1]
        this.walk(child, levels, i + 1, out);
      }
      return;
    }
    const child = node.children.get(level);
    if (child) this.walk(child, levels, i + 1, out);
  }

  private collect(node: Node, atRoot: boolean, out: RetainedRecord[]): void {
    if (!node.children) return;
    for (const [name, child] of node.children) {
      if (atRoot && name.startsWith('$')) continue;
      if (child.record) out.push(child.record);
      this.collect(child, false, out);
    }
  }
}

import type { Session, Subscription } from '../session/session.js';

/** One session's subscription at a node of the topic index. */
export interface Subscriber {
  session: Session;
  /** The session's subscription object itself: re-subscribing updates it in place */
  sub: Subscription;
}

/**
 * This shard's subscribers per topic-index node. The shared index tells which shards have
 * subscribers for a topic and at which nodes; this table turns a node id into local sessions
 * without matching the topic again. The shard's bit on a node is set while its list is non-empty.
 */
export class SubscriberTable {
  private readonly byNode = new Map<number, Subscriber[]>();
  count = 0;

  get(nodeId: number): Subscriber[] | undefined {
    return this.byNode.get(nodeId);
  }

  /** Adds or updates; returns true when the node went from no local subscribers to some. */
  add(nodeId: number, session: Session, sub: Subscription): boolean {
    let list = this.byNode.get(nodeId);
    if (!list) {
      list = [];
      this.byNode.set(nodeId, list);
    }
    for (const s of list) {
      if (s.session === session) {
        s.sub = sub;
        return false;
      }
    }
    list.push({ session, sub });
    this.count++;
    return list.length === 1;
  }

  /** Removes; returns true when the node has no local subscribers left. */
  remove(nodeId: number, session: Session): boolean {
    const list = this.byNode.get(nodeId);
    if (!list) return false;
    const i = list.findIndex((s) => s.session === session);
    if (i < 0) return false;
    list.splice(i, 1);
    this.count--;
    if (list.length > 0) return false;
    this.byNode.delete(nodeId);
    return true;
  }
}

import { Counter } from '../metrics/counters.js';
import type { QoS } from '../protocol/constants.js';
import type { Session, Subscription } from '../session/session.js';
import type { ShardState } from '../shard/state.js';

/** Subscription options as requested (MQTT 3 clients get the defaults). */
export interface SubscribeOptions {
  qos: QoS;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
  subId: number;
}

/** A shared-group join sent to its owner shard, which the SUBACK of the SUBSCRIBE waits for. */
export interface PendingJoin {
  owner: number;
  reqId: number;
  sub: Subscription;
  /** Set by the SUBSCRIBE handler: the filter, and its code's distance from the SUBACK's end */
  filter?: string;
  back?: number;
}

/** Joins and leaves of shared groups (routing/shared-groups.ts). */
export interface SharedMembership {
  /** False when this shard owns the group and could not add the member (its index is full) */
  sendMembership(t: 'sharedJoin' | 'sharedLeave', session: Session, sub: Subscription): boolean;
}

/**
 * A session's subscriptions in the routing tables: a plain filter goes into the shared topic
 * index (this shard's bit set while it has subscribers there) and this shard's subscriber list;
 * a shared one joins its group at the owner shard.
 */
export class Subscriptions {
  /** Shared subscriptions of this shard's sessions: count, for the gauge */
  private sharedSubs = 0;

  constructor(
    private readonly s: ShardState,
    private readonly shared: SharedMembership,
  ) {}

  /**
   * Adds or replaces a subscription. Returns 'new' or 'existing' (for Retain Handling 1), or
   * null when the topic index is full.
   */
  subscribe(
    session: Session,
    filter: string,
    o: SubscribeOptions,
    shared: Subscription['shared'] = null,
  ): 'new' | 'existing' | null {
    const existing = session.subscriptions.get(filter);
    if (existing) {
      existing.qos = o.qos;
      existing.noLocal = o.noLocal;
      existing.retainAsPublished = o.retainAsPublished;
      existing.retainHandling = o.retainHandling;
      existing.subId = o.subId;
      this.s.durable?.sessionChanged(session);
      if (existing.shared) this.shared.sendMembership('sharedJoin', session, existing);
      else this.s.subscribers.add(existing.nodeId, session, existing);
      return 'existing';
    }
    const sub: Subscription = { ...o, nodeId: -1, shared };
    this.s.durable?.sessionChanged(session);
    if (shared) {
      session.subscriptions.set(filter, sub);
      this.sharedSubs++;
      this.s.counters.row[Counter.subscriptionsShared] = this.sharedSubs;
      if (this.shared.sendMembership('sharedJoin', session, sub)) return 'new';
      this.unsubscribe(session, filter); // this shard owns the group and its index is full
      return null;
    }
    const nodeId = this.s.index.acquire(filter, this.s.id);
    if (nodeId < 0) {
      this.s.counters.row[Counter.subscriptionsIndexFull]++;
      this.s.log.warn({ filter }, 'topic index full; subscription refused');
      return null;
    }
    sub.nodeId = nodeId;
    session.subscriptions.set(filter, sub);
    this.s.subscribers.add(nodeId, session, sub);
    this.s.counters.row[Counter.subscriptions] = this.s.subscribers.count;
    return 'new';
  }

  /** Returns false when there was no such subscription. */
  unsubscribe(session: Session, filter: string): boolean {
    const sub = session.subscriptions.get(filter);
    if (!sub) return false;
    session.subscriptions.delete(filter);
    this.s.durable?.sessionChanged(session);
    if (sub.shared) {
      this.sharedSubs--;
      this.s.counters.row[Counter.subscriptionsShared] = this.sharedSubs;
      if (session.conn) this.shared.sendMembership('sharedLeave', session, sub);
      return true;
    }
    if (this.s.subscribers.remove(sub.nodeId, session)) this.s.index.clearShard(sub.nodeId, this.s.id);
    this.s.counters.row[Counter.subscriptions] = this.s.subscribers.count;
    return true;
  }
}
